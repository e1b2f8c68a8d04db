"""What every patch module shares: the idempotence marker, the missing-target check, and the all-or-nothing
record (`replace` / `keep` inside `all_or_nothing()`, which `_patches.apply_module` opens around each module's
`apply()`). Imports neither TransformerLens nor SAELens."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from r1_plugin._patches._versions import versions_text
from r1_plugin.errors import PatchTargetError

# A patched function/class carries MARK = True and `__wrapped_original__`; re-applying a patch checks MARK first.
MARK = "_r1_plugin_patched"

_MISSING = object()


class Rollback:
    """What one patch module changed, in order, and how to undo it: `restore()` puts every replaced attribute and
    every kept container back as it was (newest first)."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def replace(self, owner: Any, attr: str, value: Any) -> None:
        """`setattr(owner, attr, value)`, remembering the old value (a class's own `__dict__` entry, so a
        classmethod comes back as the classmethod object; none: the attribute is deleted again)."""
        old = owner.__dict__.get(attr, _MISSING) if isinstance(owner, type) else getattr(owner, attr, _MISSING)

        def undo() -> None:
            if old is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, old)

        setattr(owner, attr, value)
        self._undo.append(undo)

    def keep(self, container: list[Any] | dict[Any, Any]) -> None:
        """Snapshot a list or dict the patch is about to change in place (and the lists a dict holds)."""
        if isinstance(container, list):
            saved_list = list(container)
            self._undo.append(lambda: container.__setitem__(slice(None), saved_list))
            return
        saved = dict(container)
        inner = {key: list(value) for key, value in saved.items() if isinstance(value, list)}

        def undo() -> None:
            for key, items in inner.items():
                saved[key][:] = items
            container.clear()
            container.update(saved)

        self._undo.append(undo)

    def restore(self) -> None:
        """Undo everything recorded, newest first."""
        while self._undo:
            self._undo.pop()()


_active: list[Rollback] = []  # the open all_or_nothing() records (the caller holds _patches' lock)


@contextmanager
def all_or_nothing() -> Iterator[Rollback]:
    """Record every `replace` / `keep` made inside; when the block raises, restore them all and re-raise."""
    record = Rollback()
    _active.append(record)
    try:
        yield record
    except BaseException:
        record.restore()
        raise
    finally:
        _active.remove(record)


def replace(owner: Any, attr: str, value: Any) -> None:
    """Set `owner.attr = value`, undone if the enclosing patch module fails later (see `all_or_nothing`)."""
    if _active:
        _active[-1].replace(owner, attr, value)
    else:
        setattr(owner, attr, value)


def keep(container: list[Any] | dict[Any, Any]) -> None:
    """Before changing a list or dict in place: snapshot it, restored if the enclosing patch module fails later."""
    if _active:
        _active[-1].keep(container)


def is_patched(obj: Any) -> bool:
    """Whether `obj` is one of r1_plugin's wrappers."""
    return bool(getattr(obj, MARK, False))


def mark(wrapper: Any, original: Any) -> Any:
    """Tag `wrapper` as r1_plugin's and remember what it wraps; returns `wrapper`."""
    setattr(wrapper, MARK, True)
    wrapper.__wrapped_original__ = original
    return wrapper


def require(owner: Any, attr: str, patch: str) -> Any:
    """`owner.attr` (looked up in `owner.__dict__` for classes, so inherited methods do not count), or a
    PatchTargetError naming the patch and the installed versions when this version of the library lacks it."""
    if isinstance(owner, type):
        found = attr in owner.__dict__
        value = owner.__dict__.get(attr)
    else:
        found = hasattr(owner, attr)
        value = getattr(owner, attr, None)
    if not found:
        where = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
        module = getattr(owner, "__module__", "") if isinstance(owner, type) else ""
        raise PatchTargetError(
            f"r1_plugin's patch {patch} replaces {module + '.' if module else ''}{where}.{attr}, which does not "
            f"exist in the installed versions ({versions_text()}). Install the versions r1_plugin is tested "
            "with (see `r1-plugin doctor`), or report this with the versions above."
        )
    return value


def bind(original: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The arguments of a call to `original` by name (defaults filled in), read from its own signature, so a
    wrapper that forwards `*args, **kwargs` can still look at one of them; a bad call raises TypeError as the
    original would."""
    bound = inspect.signature(original).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)
