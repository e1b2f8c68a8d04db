"""What every patch module shares: the idempotence marker and the module (not class) TransformerLens patches hit."""

from __future__ import annotations

import importlib
from typing import Any

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
