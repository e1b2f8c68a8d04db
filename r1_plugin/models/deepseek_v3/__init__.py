"""DeepSeek-V3 / R1 (MLA + DeepSeek MoE, FP8 checkpoints) as a TransformerLens HookedTransformer."""

from r1_plugin.models.deepseek_v3.config import ARCHITECTURE, DeepseekV3HookedConfig, hf_to_tl_config_dict

__all__ = ["ARCHITECTURE", "DeepseekV3HookedConfig", "hf_to_tl_config_dict"]
