"""A damaged DeepSeek-V3 folder booted through TransformerBridge names the file, what is wrong and the fix, exactly
as on the HookedTransformer path (the same CheckpointFiles reader and config checks). SAELens-free: runs on TL 4."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import r1_plugin  # noqa: F401  (applies the tl_bridge patch: boot_transformers reads R1 folders itself)
from r1_plugin.errors import R1PluginError
from r1_plugin.testing.deepseek_checkpoints import (
    DAMAGES,
    damage_checkpoint,
    tiny_config,
    write_tiny_checkpoint,
)

pytestmark = pytest.mark.bridge

WHAT = {
    "truncated_shard": "not a readable safetensors file, likely truncated",
    "garbage_index": "is not valid JSON",
    "index_without_weight_map": "has no `weight_map`",
    "index_names_missing_shard": "names 1 shard(s) that are not in the folder",
    "tensor_missing_from_shard": "does not hold tensor",
    "wrong_dtype": "as torch.int32, which is not a weight dtype",
    "wrong_shape": "config.json needs",
    "garbage_config": "is not valid JSON",
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_folder_on_the_bridge_names_file_and_fix(tmp_path: Path, damage: str) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    folder = tmp_path / "ckpt"
    write_tiny_checkpoint(config=tiny_config(num_hidden_layers=2), seed=2, folder=folder, n_shards=3)
    filename, key = damage_checkpoint(folder, damage)
    with pytest.raises(R1PluginError) as info:
        TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32, keep_fp8=False)
    message = str(info.value)
    assert filename in message and WHAT[damage] in message, message
    assert key is None or key in message, message
