"""Every patch r1_plugin makes into TransformerLens and SAELens lives in this package, one module per target.

- `tl_models`: TransformerLens's model-name registry, name resolution and HF-config conversion (R1 distills,
  DeepSeek-V3 names, local folders, clear errors).
- `tl_deepseek`: TransformerLens internals the DeepSeek-V3 architecture needs (config class, block factory,
  latent KV cache, streaming from_pretrained).
- `tl_generation`: class-level pass-throughs of HookedTransformer.forward / generate / generate_stream that report
  forward and generation boundaries to an observer attached to one instance (the steering tracker).
- `sae_lens`: SAELens's pretrained-SAE directory and loader registries (Goodfire's R1 SAEs from our yaml).

Each module has `apply()`: idempotent (guarded by a marker attribute), all-or-nothing for its own target, and
each patch says in a comment what it patches and why. A module named `tl_*` patches `transformer_lens`, one named
`sae_lens*` patches `sae_lens` (`target_of`).

`import r1_plugin` imports neither library: `install()` applies a module's patches at once when its target is
already imported, and otherwise when the target is first imported, from a post-import hook on `sys.meta_path`
(`_PostImportHook`). That hook is process-wide state, which is why it lives here. `apply_all()` (what
`r1_plugin.register()` calls) imports the targets and applies everything now.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

# Applied in this order within a target; adding a patch module is one name here.
PATCH_MODULES: tuple[str, ...] = ("tl_models", "tl_deepseek", "tl_generation", "tl_bridge", "sae_lens")

# Patch-module name prefix -> the top-level package whose import applies it.
TARGET_PREFIXES: tuple[tuple[str, str], ...] = (("tl_", "transformer_lens"), ("sae_lens", "sae_lens"))

# The versions r1_plugin is tested with ([low, high) on the release number). Outside them one warning at the first
# patch; a patch target that is missing raises PatchTargetError instead of half-patching.
TESTED_VERSIONS: dict[str, tuple[str, str]] = {
    "transformer-lens": ("3.9", "3.10"),
    "sae-lens": ("6.54", "6.55"),
    # r1_plugin patches nothing in transformers; it reads HF configs and loads the HF reference models in tests.
    "transformers": ("5.0", "6.0"),
}

_status: dict[str, str] = {}  # patch module -> "applied" | "failed: <error>"
_lock = threading.RLock()
_versions_checked = False


class PatchVersionWarning(UserWarning):
    """TransformerLens, SAELens or transformers is outside the versions r1_plugin is tested with."""


def target_of(name: str) -> str:
    """The top-level package patch module `name` patches (from its name prefix)."""
    for prefix, target in TARGET_PREFIXES:
        if name.startswith(prefix):
            return target
    raise ValueError(f"patch module {name!r} matches no prefix in TARGET_PREFIXES {TARGET_PREFIXES}")


def installed_versions() -> dict[str, str | None]:
    """The installed version of every package in TESTED_VERSIONS (None when not installed)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for dist in TESTED_VERSIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def versions_text() -> str:
    """`transformer-lens 3.9.0, sae-lens 6.54.12, transformers 5.24.0` (for error messages)."""
    return ", ".join(f"{dist} {version or 'not installed'}" for dist, version in installed_versions().items())


def untested_versions() -> dict[str, str]:
    """Installed packages outside TESTED_VERSIONS, with the installed version."""
    from packaging.version import InvalidVersion, Version

    out: dict[str, str] = {}
    for dist, version in installed_versions().items():
        if version is None:
            continue
        low, high = TESTED_VERSIONS[dist]
        try:
            release = Version(Version(version).base_version)
        except InvalidVersion:
            out[dist] = version
            continue
        if not Version(low) <= release < Version(high):
            out[dist] = version
    return out


def check_versions() -> None:
    """Warn once (one warning naming every package) when a patched library is outside the tested versions."""
    global _versions_checked
    if _versions_checked:
        return
    _versions_checked = True
    bad = untested_versions()
    if bad:
        found = ", ".join(f"{dist} {version}" for dist, version in bad.items())
        tested = ", ".join(f"{dist} >={low},<{high}" for dist, (low, high) in TESTED_VERSIONS.items())
        warnings.warn(
            f"r1_plugin is tested with {tested}; found {found}. Its patches may not fit these versions: "
            "`r1-plugin doctor` shows which applied; pin the tested versions if something breaks.",
            PatchVersionWarning,
            stacklevel=3,
        )


def apply_module(name: str) -> None:
    """Import patch module `name` and apply it (idempotent); its status is recorded for `patch_status()`."""
    with _lock:
        check_versions()
        try:
            importlib.import_module(f"{__name__}.{name}").apply()
        except Exception as exc:
            _status[name] = f"failed: {type(exc).__name__}: {exc}"
            raise
        _status[name] = "applied"


def apply_target(target: str) -> None:
    """Apply every patch module of one target package (in PATCH_MODULES order)."""
    for name in PATCH_MODULES:
        if target_of(name) == target:
            apply_module(name)


def apply_all() -> None:
    """Import every target and apply every patch now (safe to call any number of times)."""
    for name in PATCH_MODULES:
        apply_module(name)


def patch_status() -> dict[str, str]:
    """Each patch module -> "applied", "failed: ...", or "pending (<target> not imported yet)"."""
    return {
        name: _status.get(name, f"pending ({target_of(name)} not imported yet)") for name in PATCH_MODULES
    }


def _fully_imported(name: str) -> bool:
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a pending target it asks the other finders for the spec and makes the loader apply
    the target's patches right after the module has executed (so `import transformer_lens` returns it patched).

    A patch imports r1_plugin modules, and an r1_plugin module may be what imports the target in the first place
    (`r1_plugin.models.deepseek_v3.config` imports TransformerLens and is imported by the `tl_deepseek` patch). So
    the loaders of r1_plugin's own modules are wrapped too: while any of them is still executing in this thread the
    target's patches wait, and they are applied when the outermost one has finished.
    """

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self._local = threading.local()

    def _state(self) -> Any:
        if not hasattr(self._local, "depth"):
            self._local.depth = 0
            self._local.deferred = []
        return self._local

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        watched = fullname in self.pending
        ours = fullname.startswith("r1_plugin.")
        if not (watched or ours):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            vars(loader).pop("exec_module", None)  # back to the loader's own method for any later use
            state = self._state()
            state.depth += ours
            try:
                original_exec(module)
            except BaseException:
                self._finish(fullname, watched, ours, failed=True)
                raise
            self._finish(fullname, watched, ours, failed=False)

        loader.exec_module = exec_module  # an attribute of this one loader instance, removed after use
        return spec

    def _finish(self, fullname: str, watched: bool, ours: bool, failed: bool) -> None:
        """After a wrapped module executed: queue a target's patches; apply the queue once no r1_plugin module is
        executing any more in this thread."""
        state = self._state()
        state.depth -= ours
        if watched and not failed:  # a target whose import failed stays pending: a retry is hooked again
            self.pending.discard(fullname)
            state.deferred.append(fullname)
            if not self.pending:
                self.remove()
        if state.depth or not state.deferred:
            return
        targets, state.deferred = state.deferred, []
        for target in targets:
            if failed:  # the import is failing anyway: record what the patches do, raise the original error
                try:
                    apply_target(target)
                except Exception:
                    pass
            else:
                apply_target(target)

    def remove(self) -> None:
        """Take the hook off sys.meta_path (nothing left to wait for)."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)


_hook = _PostImportHook()


def install() -> None:
    """Apply each target's patches now if it is imported, else when it is (what `import r1_plugin` does)."""
    with _lock:
        for target in dict.fromkeys(target_of(name) for name in PATCH_MODULES):
            if _fully_imported(target):
                apply_target(target)
            elif target not in sys.modules:
                _hook.pending.add(target)
        if _hook.pending and _hook not in sys.meta_path:
            sys.meta_path.insert(0, _hook)


def hook_installed() -> bool:
    """Whether the post-import hook is on sys.meta_path (some target not imported yet)."""
    return _hook in sys.meta_path

