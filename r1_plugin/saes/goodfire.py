"""SAELens loader and config getter for Goodfire's tied-weight .pt SAEs (DeepSeek-R1 layer 37 and any release
declared the same way in r1_plugin's pretrained_saes.yaml).

File format (Goodfire's `BatchTopKTiedSAE.state_dict()` saved with `torch.save`): `W` [d_in, d_sae], `b_enc`
[d_sae], `b_dec` [d_in]. Encode is `relu(x @ W + b_enc)` then top-k, decode `f @ W.T + b_dec`, so in SAELens
terms `W_enc = W`, `W_dec = W.T` (an own contiguous copy), `apply_b_dec_to_input = False`.

Every number (d_in, d_sae, k, hook, model) comes from the release's `config_overrides` in the yaml, which
SAELens hands to the loader as `cfg_overrides`; nothing about a particular SAE is written here. The file is
read with `torch.load(weights_only=True)` only: a .pt from the internet is otherwise code execution.
"""

from __future__ import annotations

import json
import pickle
import posixpath
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from r1_plugin.errors import R1PluginError, missing_from_cache
from r1_plugin.saes import cache

CONVERSION_FUNC = "goodfire_r1"
REQUIRED_CONFIG_KEYS: tuple[str, ...] = ("d_in", "d_sae", "k", "hook_name", "model_name")
SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("topk", "goodfire_batch_topk")
FILE_KEYS: tuple[str, ...] = ("W", "b_enc", "b_dec")
REFETCH = (
    "delete it and fetch it again (e.g. `SAE.from_pretrained(..., force_download=True)` or "
    "`hf download <repo> <file> --force-download`)"
)
_FINITE_CHUNK = 1 << 24  # elements checked at a time: a bounded temporary even for a 205M-entry W

_CFG_DEFAULTS: dict[str, Any] = {
    "architecture": "topk",
    "apply_b_dec_to_input": False,
    "normalize_activations": "none",
    "hook_head_index": None,
    "prepend_bos": True,
    "dtype": "float32",
    "sae_lens_training_version": None,
}


class SAEConfigError(R1PluginError, ValueError):
    """A registry entry that does not declare what the Goodfire loader needs, or contradicts the repo's config."""


class SAEFileError(R1PluginError, ValueError):
    """An SAE file that is truncated, corrupt, or whose tensors do not match its registry entry."""


class UnsafeSAEFileError(SAEFileError):
    """An SAE file that `torch.load(weights_only=True)` refuses: it holds objects or code, not just tensors."""


def get_goodfire_r1_config_from_hf(
    repo_id: str,
    folder_name: str,
    device: str | None = None,
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The SAE's SAELens config dict, built from the registry entry's `config_overrides` (no download needed)."""
    cfg = goodfire_config(f"{repo_id}/{folder_name}", cfg_overrides, device)
    _check_against_repo_config(repo_id, folder_name, cfg)
    return cfg


def goodfire_config(where: str, cfg_overrides: dict[str, Any] | None, device: str | None = None) -> dict[str, Any]:
    """The SAELens config dict of a Goodfire-format SAE from its `config_overrides`, validated."""
    overrides = {key: value for key, value in (cfg_overrides or {}).items() if value is not None}
    missing = [key for key in REQUIRED_CONFIG_KEYS if overrides.get(key) is None]
    if missing:
        raise SAEConfigError(
            f"the registry entry of {where} does not declare {', '.join(missing)}: add them under the release's "
            "`config_overrides` in r1_plugin's pretrained_saes.yaml (see docs/saes.md)"
        )
    cfg: dict[str, Any] = {**_CFG_DEFAULTS, "device": device or "cpu", **overrides}
    for key in ("d_in", "d_sae", "k"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SAEConfigError(f"{where}: `{key}` must be a positive integer, got {value!r}")
    if cfg["k"] > cfg["d_sae"]:
        raise SAEConfigError(f"{where}: k={cfg['k']} exceeds d_sae={cfg['d_sae']}")
    if cfg["architecture"] not in SUPPORTED_ARCHITECTURES:
        raise SAEConfigError(
            f"{where}: architecture {cfg['architecture']!r} is not one the {CONVERSION_FUNC} loader builds "
            f"({', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    if cfg["apply_b_dec_to_input"]:
        raise SAEConfigError(f"{where}: Goodfire's encode does not subtract b_dec; apply_b_dec_to_input must be false")
    return cfg


def _check_against_repo_config(repo_id: str, folder_name: str, cfg: dict[str, Any]) -> None:
    """If the repo's `<folder>/config.json` (e.g. Goodfire's math/config.json) is cached, it must agree with cfg."""
    from huggingface_hub import try_to_load_from_cache

    folder = posixpath.dirname(folder_name)
    config_name = f"{folder}/config.json" if folder else "config.json"
    cached = try_to_load_from_cache(repo_id, config_name)
    if not isinstance(cached, str):
        return
    try:
        repo_cfg = json.loads(Path(cached).read_text())
    except (OSError, json.JSONDecodeError):
        return  # not ours to validate; the weights' shapes are checked anyway
    declared: dict[str, Any] = {}
    if "d_in" in repo_cfg:
        declared["d_in"] = repo_cfg["d_in"]
        if "expansion_factor" in repo_cfg:
            declared["d_sae"] = repo_cfg["d_in"] * repo_cfg["expansion_factor"]
    if "k" in repo_cfg:
        declared["k"] = repo_cfg["k"]
    clashes = [f"{key}: entry {cfg[key]} vs {config_name} {value}" for key, value in declared.items() if cfg[key] != value]
    if clashes:
        raise SAEConfigError(
            f"the registry entry of {repo_id}/{folder_name} contradicts the repo's {config_name} "
            f"({'; '.join(clashes)}): fix `config_overrides` in pretrained_saes.yaml"
        )


def download(repo_id: str, filename: str, force_download: bool = False) -> Path:
    """`hf_hub_download` with a clear error naming the repo/file and how to fetch it when it is not cached offline."""
    from huggingface_hub import hf_hub_download

    with missing_from_cache(repo_id, filename):
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, force_download=force_download))


def load_pt_weights_only(path: str | Path) -> dict[str, torch.Tensor]:
    """`torch.load(path, weights_only=True)` of a tensor dict, with clear errors for unsafe or damaged files."""
    path = Path(path)
    fix = REFETCH
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise UnsafeSAEFileError(
                f"{path} was refused by torch.load(weights_only=True): it holds objects other than tensors and "
                "plain containers, i.e. code that unpickling would run. r1_plugin never loads SAE files unsafely; "
                f"if you trust its source, convert it yourself, otherwise {fix}. ({_first_line(exc)})"
            ) from exc
        raise SAEFileError(f"{path} is not a readable torch file (corrupt or truncated): {fix}. "
                           f"({_first_line(exc)})") from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/IndexError/... on damaged bytes
        raise SAEFileError(f"{path} is not a readable torch file (corrupt or truncated): {fix}. "
                           f"({_first_line(exc)})") from exc
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SAEFileError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__}): {fix}")
    return obj


def check_finite(state: Mapping[str, torch.Tensor], source: str, fix: str = "", note: str = "") -> None:
    """Refuse an SAE whose floating-point tensors hold NaN or inf, naming the file and the tensor: one such entry
    turns every encoded activation, and every steered residual, into NaN."""
    fix = fix or f"the file is damaged, or the SAE diverged in training; {REFETCH}"
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        bad, first = 0, -1
        for start in range(0, flat.numel(), _FINITE_CHUNK):
            wrong = ~torch.isfinite(flat[start : start + _FINITE_CHUNK])
            count = int(wrong.sum())
            if count and first < 0:
                first = start + int(wrong.nonzero()[0, 0])
            bad += count
        if bad:
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(first), tuple(tensor.shape)))
            raise SAEFileError(
                f"{source}: tensor `{name}` {tuple(tensor.shape)} holds {bad} non-finite value(s) (NaN or inf), the "
                f"first at {list(index)}{note}; encoding or steering with it gives NaN everywhere: {fix}"
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def convert_state_dict(raw: dict[str, torch.Tensor], cfg: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """Goodfire's {W, b_enc, b_dec} -> SAELens's {W_enc, W_dec, b_enc, b_dec}, shapes checked against `cfg`."""
    missing = [key for key in FILE_KEYS if key not in raw]
    if missing:
        raise SAEFileError(
            f"{source} lacks {', '.join(missing)} (has {', '.join(sorted(raw)) or 'nothing'}): it is not a Goodfire "
            f"tied SAE ({'/'.join(FILE_KEYS)}); check the release's path and conversion_func in pretrained_saes.yaml"
        )
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    expected = {"W": (d_in, d_sae), "b_enc": (d_sae,), "b_dec": (d_in,)}
    wrong = [f"{key} {tuple(raw[key].shape)} (entry says {shape})" for key, shape in expected.items()
             if tuple(raw[key].shape) != shape]
    if wrong:
        raise SAEFileError(
            f"{source}: the file's shapes disagree with its registry entry (d_in={d_in}, d_sae={d_sae}): "
            f"{'; '.join(wrong)}. Fix d_in/d_sae in the release's config_overrides, or the file is not this SAE."
        )
    if not all(raw[key].is_floating_point() for key in FILE_KEYS):
        raise SAEFileError(f"{source}: W, b_enc and b_dec must be floating-point tensors")
    from sae_lens.util import str_to_dtype

    check_finite({key: raw[key] for key in FILE_KEYS}, source)
    dtype = str_to_dtype(cfg["dtype"]) if isinstance(cfg["dtype"], str) else cfg["dtype"]
    device = cfg["device"]
    converted = {key: raw[key].to(device=device, dtype=dtype) for key in FILE_KEYS}
    if any(converted[key].dtype != raw[key].dtype for key in FILE_KEYS):  # e.g. 1e5 overflows float16
        check_finite(converted, source, fix=f"load it in a wider dtype (dtype='float32'), not {dtype}",
                     note=f" after casting to {dtype}")
    W_enc = converted["W"]
    return {
        "W_enc": W_enc,
        # An own contiguous copy, not a view of W_enc: editing one must not edit the other.
        "W_dec": W_enc.T.clone(memory_format=torch.contiguous_format),
        "b_enc": converted["b_enc"],
        "b_dec": converted["b_dec"],
    }


def goodfire_r1_huggingface_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """SAELens loader (`conversion_func: goodfire_r1`): config from the entry, weights from the cached .pt."""
    cfg = get_goodfire_r1_config_from_hf(repo_id, folder_name, device, force_download, cfg_overrides)
    path = download(repo_id, folder_name, force_download)
    raw, _ = cache.load_with_copy(path, load_pt_weights_only)
    return cfg, convert_state_dict(raw, cfg, f"{repo_id}/{folder_name}"), None


def disk_converter(
    config_overrides: dict[str, Any],
) -> Callable[..., tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """A converter for `SAE.load_from_disk(<file.pt>, converter=...)`: a Goodfire-format file on disk, described by
    `config_overrides` (what a release's `config_overrides` holds); nothing touches the hub."""

    def load(path: str | Path, device: str = "cpu", cfg_overrides: dict[str, Any] | None = None) -> tuple[
        dict[str, Any], dict[str, torch.Tensor]
    ]:
        cfg = goodfire_config(str(path), {**config_overrides, **(cfg_overrides or {})}, device)
        return cfg, convert_state_dict(load_pt_weights_only(path), cfg, str(path))

    return load


LOADERS = {CONVERSION_FUNC: goodfire_r1_huggingface_loader}
CONFIG_GETTERS = {CONVERSION_FUNC: get_goodfire_r1_config_from_hf}
