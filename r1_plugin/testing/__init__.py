"""Builders for tiny checkpoints in the real on-disk formats, written into a (temporary) HF cache.

Used by the test-suite, the benchmarks and the embedded demo: everything loads through the real code path
under the real repo ids, with `HF_HUB_OFFLINE=1`. A documented public fixture package, not test-only code:
users can build the same tiny checkpoints for their own tests (test-only oracles live in `tests/`).
"""
