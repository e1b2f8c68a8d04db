"""The models r1_plugin registers with TransformerLens: HF ids, short aliases and architecture family."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: its HF repo id, the aliases TransformerLens accepts and its HF architecture."""

    hf_id: str
    architecture: str
    aliases: tuple[str, ...] = field(default_factory=tuple)
    family: str = ""  # tokenizer/chat family: "r1" (R1/V3 tokenizer), "qwen" or "llama" (distills)


DISTILLS: tuple[ModelSpec, ...] = (
    ModelSpec("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Qwen2ForCausalLM", ("r1-distill-qwen-1.5b",), "qwen"),
    ModelSpec("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "Qwen2ForCausalLM", ("r1-distill-qwen-7b",), "qwen"),
    ModelSpec("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "Qwen2ForCausalLM", ("r1-distill-qwen-14b",), "qwen"),
    ModelSpec("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "Qwen2ForCausalLM", ("r1-distill-qwen-32b",), "qwen"),
    ModelSpec("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "LlamaForCausalLM", ("r1-distill-llama-8b",), "llama"),
    ModelSpec("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "LlamaForCausalLM", ("r1-distill-llama-70b",), "llama"),
)

DEEPSEEK_V3_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("deepseek-ai/DeepSeek-R1", "DeepseekV3ForCausalLM", ("deepseek-r1", "r1"), "r1"),
    ModelSpec("deepseek-ai/DeepSeek-R1-0528", "DeepseekV3ForCausalLM", ("deepseek-r1-0528", "r1-0528"), "r1"),
    ModelSpec("deepseek-ai/DeepSeek-R1-Zero", "DeepseekV3ForCausalLM", ("deepseek-r1-zero", "r1-zero"), "r1"),
    ModelSpec("deepseek-ai/DeepSeek-V3", "DeepseekV3ForCausalLM", ("deepseek-v3",), "r1"),
    ModelSpec("deepseek-ai/DeepSeek-V3-0324", "DeepseekV3ForCausalLM", ("deepseek-v3-0324",), "r1"),
)

# The embedded demo model is not registered: it loads by path from the package folder (r1_plugin.demo.assets), so
# no name TransformerLens resolves can ever mean a download of someone else's repo.
ALL_MODELS: tuple[ModelSpec, ...] = DISTILLS + DEEPSEEK_V3_MODELS

# Architectures r1_plugin converts itself (the HF config is always read, never guessed from the name).
SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("DeepseekV3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM")

_BY_NAME: dict[str, ModelSpec] = {
    name.lower(): spec for spec in ALL_MODELS for name in (spec.hf_id, *spec.aliases)
}


def lookup(name: str) -> ModelSpec | None:
    """The registered model for an HF id or alias (case-insensitive), or None."""
    return _BY_NAME.get(name.lower())


def closest_names(name: str, candidates: list[str], n: int = 5) -> list[str]:
    """The registered names closest to a misspelt one, best first."""
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    if not hits:  # fall back to substring matches on the last path component
        tail = name.lower().rsplit("/", 1)[-1]
        hits = [c for c in lowered if tail and (tail in c or c.rsplit("/", 1)[-1] in tail)][:n]
    return [lowered[h] for h in hits]
