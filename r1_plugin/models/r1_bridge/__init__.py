"""DeepSeek-V3/R1 on TransformerLens's TransformerBridge: the corrected adapter (`adapter`) and FP8 checkpoints built
in the requested dtype (`loading`). Imports nothing of HookedTransformer, so it works under TransformerLens 4 too."""
