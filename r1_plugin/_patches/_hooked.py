"""The module (not the class) `transformer_lens.HookedTransformer`, which the TransformerLens 3.9 patches hit.

`import transformer_lens.HookedTransformer as m` yields the class that transformer_lens/__init__.py re-exports under
the same name, and a patch on it would silently do nothing. Only `tl_models` and `tl_deepseek` import this (their
requirement in `_patches.REQUIRES` keeps them from being imported under TransformerLens 4, which has no such module).
"""

from __future__ import annotations

import importlib

hooked_transformer_module = importlib.import_module("transformer_lens.HookedTransformer")
