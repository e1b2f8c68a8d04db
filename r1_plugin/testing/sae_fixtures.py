"""Random SAEs in the published on-disk formats, written into the (temporary) HF cache under the real repo ids.

- Goodfire's R1 SAEs (`Goodfire/DeepSeek-R1-SAE-l37`): `torch.save` of {W [d_in, d_sae], b_enc, b_dec} at
  `logic/DeepSeek-R1-SAE-l37.pt` (float32) and `math/DeepSeek-R1-SAE-l37.pt` (bfloat16) plus `math/config.json`;
  file names, dims and k are read from r1_plugin's registry entries, so fixtures follow the yaml.
- Llama Scope R1-Distill SAEs (`fnlp/Llama-Scope-R1-Distill`, SAELens release `llama_scope_r1_distill`):
  `<mix>/L<layer>R/config.json` + `sae_weights.safetensors` with the lm-saes key names SAELens's loader reads.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from r1_plugin.saes.releases import raw_releases
from r1_plugin.testing.hub import write_hf_repo

GOODFIRE_RELEASES: dict[str, str] = {"logic": "goodfire-deepseek-r1-logic", "math": "goodfire-deepseek-r1-math"}
# The dtypes Goodfire published the files in (logic re-uploaded in float32, math in bfloat16).
GOODFIRE_FILE_DTYPES: dict[str, torch.dtype] = {"logic": torch.float32, "math": torch.bfloat16}
LLAMA_SCOPE_R1_RELEASE = "llama_scope_r1_distill"


def goodfire_entry(name: str, sae_id: str = "layer_37") -> dict[str, Any]:
    """repo_id, path and config of Goodfire's `name` ("logic"/"math") SAE, read from r1_plugin's registry yaml."""
    entry = raw_releases()[GOODFIRE_RELEASES[name]]
    path = next(sae["path"] for sae in entry["saes"] if sae["id"] == sae_id)
    return {"repo_id": entry["repo_id"], "path": path, **entry["config_overrides"]}


def random_goodfire_state_dict(
    d_in: int, d_sae: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Goodfire's tied-SAE state dict with random values (W entries N(0, 1/d_in): columns of norm ~1).

    Drawn directly in `dtype` and scaled in place, so the real shapes (205M entries) take seconds, not tens.
    """
    gen = torch.Generator().manual_seed(seed)
    W = torch.empty(d_in, d_sae, dtype=dtype).normal_(generator=gen).mul_(d_in**-0.5)
    b_enc = torch.empty(d_sae, dtype=dtype).normal_(std=0.1, generator=gen)
    b_dec = torch.empty(d_in, dtype=dtype).normal_(std=0.1, generator=gen)
    return {"W": W, "b_enc": b_enc, "b_dec": b_dec}


def torch_save_bytes(obj: Any) -> bytes:
    """The bytes `torch.save(obj, path)` writes (the zip format every .pt on the hub uses)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_goodfire_r1_repo(
    saes: Mapping[str, Mapping[str, torch.Tensor] | bytes],
    repo_id: str | None = None,
    with_math_config: bool = True,
    math_k: int | None = None,
) -> Path:
    """Write Goodfire's repo as ONE commit: `saes` maps "logic"/"math" to a state dict (or raw file bytes).

    `math/config.json` is written as Goodfire publishes it ({"d_in", "expansion_factor", "k"}): dims from the
    state dict's W (else the registry entry), k from `math_k` (else the entry). All files go in one commit
    because a commit replaces `refs/main`. Returns the snapshot dir.
    """
    files: dict[str, bytes | str] = {}
    for name, content in saes.items():
        entry = goodfire_entry(name)
        repo_id = repo_id or entry["repo_id"]
        files[entry["path"]] = content if isinstance(content, bytes) else torch_save_bytes(dict(content))
        if name == "math" and with_math_config:
            d_in, d_sae = (entry["d_in"], entry["d_sae"]) if isinstance(content, bytes) else content["W"].shape
            config = {"d_in": int(d_in), "expansion_factor": int(d_sae) // int(d_in), "k": math_k or entry["k"]}
            files[f"{Path(entry['path']).parent.as_posix()}/config.json"] = json.dumps(config)
    if repo_id is None:
        raise ValueError("no SAE given")
    return write_hf_repo(repo_id, files)


def write_real_shape_goodfire(name: str = "math", seed: int = 0) -> tuple[dict[str, torch.Tensor], Path]:
    """Goodfire's `name` SAE at its real shapes and file dtype (random values) in the HF cache (math: ~411 MB)."""
    entry = goodfire_entry(name)
    state = random_goodfire_state_dict(entry["d_in"], entry["d_sae"], GOODFIRE_FILE_DTYPES[name], seed)
    return state, write_goodfire_r1_repo({name: state})


def llama_scope_r1_distill_folder(sae_id: str) -> tuple[str, str]:
    """(repo_id, folder) of a `llama_scope_r1_distill` SAE, as SAELens's own registry lists it."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    lookup = get_pretrained_saes_directory()[LLAMA_SCOPE_R1_RELEASE]
    return lookup.repo_id, lookup.saes_map[sae_id]


def write_llama_scope_r1_distill_sae(
    sae_id: str, layer: int, d_model: int, expansion_factor: int = 4, seed: int = 0
) -> tuple[dict[str, torch.Tensor], Path]:
    """A random Llama Scope R1-Distill SAE for `sae_id` (JumpReLU, lm-saes layout) with `d_model` inputs."""
    repo_id, folder = llama_scope_r1_distill_folder(sae_id)
    d_sae = d_model * expansion_factor
    gen = torch.Generator().manual_seed(seed)
    decoder = torch.randn(d_model, d_sae, generator=gen)
    decoder /= decoder.norm(dim=0, keepdim=True)
    state = {
        "encoder.weight": (decoder.T + 0.1 * torch.randn(d_sae, d_model, generator=gen)).contiguous(),
        "encoder.bias": 0.05 * torch.randn(d_sae, generator=gen),
        "decoder.weight": decoder.contiguous(),
        "decoder.bias": 0.05 * torch.randn(d_model, generator=gen),
        "log_jumprelu_threshold": torch.log(torch.rand(d_sae, generator=gen) * 0.5 + 0.05),
    }
    hook = f"blocks.{layer}.hook_resid_post"
    config = {
        "sae_type": "sae",
        "d_model": d_model,
        "expansion_factor": expansion_factor,
        "d_sae": d_sae,
        "hook_point_in": hook,
        "hook_point_out": hook,
        "act_fn": "jumprelu",
        "use_decoder_bias": True,
        "norm_activation": "dataset-wise",
        "dtype": "torch.float32",
    }
    files = {
        f"{folder}/config.json": json.dumps(config, indent=2),
        f"{folder}/sae_weights.safetensors": safetensors_bytes(state),
    }
    return state, write_hf_repo(repo_id, files)
