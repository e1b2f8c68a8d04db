"""Run TransformerLens's own unit tests with and without `import r1_plugin` and print every per-test difference.

`import r1_plugin` must change nothing r1_plugin does not own, so TransformerLens's suite (from the sdist of the
installed version) must give the same outcome for every test in both runs. Tests that need the Hugging Face Hub
fail offline; they fail identically in both runs, which is fine: only differences count.

    python scripts/tl_compat.py                       # whole unit suite (~35+ min per run on 2 cores)
    python scripts/tl_compat.py --subset ci           # the fixed subset CI runs (SUBSETS["ci"])
    python scripts/tl_compat.py -- -k kv_cache        # extra pytest arguments after `--`

Exit status 0 when both runs agree (and the "with" run really had r1_plugin's patches applied), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = Path(__file__).resolve().parent / "tl_compat_plugin"

# The subset CI runs (docs/compat.md): the tests of what r1_plugin patches (names, loading, configs, blocks,
# weight processing, generation and the KV cache). The whole unit suite takes ~35+ min per run on 2 cores.
SUBSETS: dict[str, list[str]] = {
    "all": ["tests/unit"],
    "ci": [
        # names, aliases and the local-folder rule
        "tests/unit/test_supported_models.py",
        "tests/unit/test_loading_from_pretrained_utilities.py",
        "tests/unit/utilities/test_aliases.py",
        "tests/unit/utilities/test_hf_utils.py",
        # configs and the blocks HookedTransformer builds from them
        "tests/unit/test_hooked_transformer_config.py",
        "tests/unit/test_train_config_isolation.py",
        "tests/unit/components",
        "tests/unit/factories",
        # weight loading and processing (load_and_process_state_dict is patched)
        "tests/unit/pretrained_weight_conversions",
        "tests/unit/test_weight_processing.py",
        "tests/unit/test_moe_fold_guard.py",
        # generation and the KV cache (init_cache and get_pos_offset are patched)
        "tests/unit/test_generate_no_tokenizer.py",
        "tests/unit/test_key_value_cache_entry.py",
        "tests/unit/test_use_attn_result.py",
        "tests/unit/utilities/test_cache.py",
        "tests/unit/utilities/test_get_input_with_manually_prepended_bos.py",
    ],
}


def fetch_sdist(version: str, workdir: Path) -> Path:
    """Download and unpack TransformerLens's sdist of `version` (tests included); reuse an unpacked copy."""
    root = workdir / f"transformer_lens-{version}"
    if (root / "tests" / "unit").is_dir():
        return root
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
         f"transformer-lens=={version}", "-d", str(workdir)],
        check=True,
    )
    with tarfile.open(workdir / f"transformer_lens-{version}.tar.gz") as tar:
        tar.extractall(workdir, filter="data")
    # Test the INSTALLED transformer_lens (the one r1_plugin patches), not the sdist's copy on `pythonpath=["."]`.
    shutil.move(root / "transformer_lens", root / "transformer_lens.sdist-src")
    return root


def run_suite(root: Path, paths: list[str], with_plugin: bool, out: Path, extra: list[str]) -> float:
    """Run pytest on `paths` in the sdist, writing a JUnit XML report to `out`; returns the wall time."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(PLUGIN_DIR) if with_plugin else "", env.get("PYTHONPATH", "")) if p
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "--continue-on-collection-errors", f"--junitxml={out}", *paths, *extra]
    if with_plugin:
        cmd[3:3] = ["-p", "r1_compat_import"]
        env["R1_COMPAT_REPORT"] = str(out.with_suffix(".patches.json"))
    log = out.with_suffix(".log")
    print(f"running TransformerLens's tests {'with' if with_plugin else 'without'} r1_plugin (progress: {log})",
          flush=True)
    start = time.monotonic()
    with log.open("w") as fh:
        subprocess.run(cmd, cwd=root, env=env, check=False, stdout=fh, stderr=subprocess.STDOUT)
    return time.monotonic() - start


def outcomes(junit: Path) -> dict[str, str]:
    """Per-test outcome (passed/failed/error/skipped) from a JUnit XML report."""
    result: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        result[test_id] = {"failure": "failed"}.get(kinds[0], kinds[0]) if kinds else "passed"
    return result


def compare(without: dict[str, str], with_: dict[str, str]) -> list[str]:
    """Lines describing every test whose outcome differs (or that ran in only one of the runs)."""
    lines = []
    for test_id in sorted(set(without) | set(with_)):
        a, b = without.get(test_id, "absent"), with_.get(test_id, "absent")
        if a != b:
            lines.append(f"{test_id}: without r1_plugin {a}, with r1_plugin {b}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point: run both suites and compare."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", choices=sorted(SUBSETS), default="all")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a report an earlier run left in --workdir instead of running that side again")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "r1_plugin_tl_compat")
    args = parser.parse_args(argv)
    version = metadata.version("transformer-lens")
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = fetch_sdist(version, args.workdir)
    paths = SUBSETS[args.subset]
    reports = {flag: args.workdir / f"{args.subset}-{'with' if flag else 'without'}.xml" for flag in (False, True)}
    times = {
        flag: 0.0 if args.reuse and reports[flag].is_file() else run_suite(root, paths, flag, reports[flag], extra)
        for flag in (False, True)
    }
    without, with_ = outcomes(reports[False]), outcomes(reports[True])
    diffs = compare(without, with_)
    counts = {o: sum(v == o for v in with_.values()) for o in ("passed", "failed", "error", "skipped")}
    print(f"TransformerLens {version} unit tests ({args.subset}): {len(without)} without r1_plugin "
          f"({times[False]:.0f} s), {len(with_)} with ({times[True]:.0f} s); with r1_plugin: {counts}")
    patch_report = reports[True].with_suffix(".patches.json")
    problems = list(diffs)
    if not patch_report.is_file():
        problems.append("the run with r1_plugin wrote no patch report: was r1_plugin imported?")
    else:
        # TransformerLens's suite never imports SAELens, so only the TransformerLens patches must have applied.
        status = json.loads(patch_report.read_text())
        bad = {name: s for name, s in status.items() if name.startswith("tl_") and s != "applied"}
        bad.update({name: s for name, s in status.items() if s.startswith("failed")})
        if bad:
            problems.append(f"r1_plugin's patches in the run with r1_plugin: {bad}")
    for line in problems:
        print(line)
    print("no difference" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
