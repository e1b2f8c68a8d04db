"""What every patch module shares: the idempotence marker, the missing-target check, and the module (not class)
TransformerLens patches hit."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from r1_plugin.errors import PatchTargetError

# A patched function/class carries MARK = True and `__wrapped_original__`; re-applying a patch checks MARK first.
MARK = "_r1_plugin_patched"

# The module, not the class: `import transformer_lens.HookedTransformer as m` yields the class that
# transformer_lens/__init__.py re-exports under the same name, and a patch on it would silently do nothing.
hooked_transformer_module = importlib.import_module("transformer_lens.HookedTransformer")


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
    from r1_plugin._patches import versions_text

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
