"""Model-loading flags shared by every `r1-plugin` command that loads a model, with from_pretrained's meanings.

    add_model_args(parser)            # --model --dtype --device --n-devices --first-n-layers --keep-fp8
                                      # --memory-per-device --sae-device --sae-dtype
    model = load_model_from_args(args)              # HookedTransformer.from_pretrained_no_processing(...)
    sae = load_sae_from_args(args, model, release, sae_id)    # or path=... for an SAE on disk
    add_sae_source_args(group); release, sae_id, path = sae_source(args)   # --sae-release/--sae-id/--sae-path

Each flag is passed to `HookedTransformer.from_pretrained(_no_processing)` under the keyword of the same name
only when given, so a flag left out means exactly what leaving the keyword out means in Python.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from r1_plugin.errors import R1PluginError
from r1_plugin.hook_names import hook_layer

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


class ModelArgsError(R1PluginError, ValueError):
    """A --device / --n-devices / --sae-device value this machine cannot honour."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (r1_plugin.values.integer, as every count flag)."""
    from r1_plugin.cli._values import count

    return count()(text)


def memory_size(text: str) -> int:
    """argparse type: bytes from '141GB', '80GiB', '512 MiB' or a number of bytes (r1_plugin.plan_devices' reading)."""
    from r1_plugin.models.device_plan import parse_bytes

    try:
        size = parse_bytes(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return size


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: stores into the new flag's dest and prints a one-line warning on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        import sys

        print(f"{parser.prog}: warning: {option_string} is deprecated, use {self.new} "
              "(the old spelling goes in the next release)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_model_args(
    parser: argparse.ArgumentParser,
    *,
    model: bool = True,
    sae: bool = True,
    device: bool = True,
    model_default: str | None = None,
) -> None:
    """Add the model-loading flags (and `--model` unless `model=False`; the SAE flags unless `sae=False`; --device
    unless `device=False`, for commands that place nothing). With `model_default`, --model is optional."""
    group = parser.add_argument_group(
        "model loading (the keywords of HookedTransformer.from_pretrained; left out = its default)"
    )
    if model:
        group.add_argument(
            "--model", required=model_default is None, default=model_default,
            help="model name (HF id or alias) TransformerLens can load, or a checkpoint folder"
            + (" (default: %(default)s)" if model_default is not None else ""),
        )  # fmt: skip
    group.add_argument(
        "--dtype", choices=DTYPES, default=None,
        help="weights and activations dtype (default: TransformerLens's float32; R1: bfloat16)",
    )
    if device:
        group.add_argument(
            "--device", default=None, help="torch device, e.g. cuda:0 (default: TransformerLens's choice)"
        )
    group.add_argument(
        "--n-devices", type=positive_int, default=None, metavar="N",
        help="split the blocks over N CUDA devices, starting at --device (default 1)",
    )
    group.add_argument(
        "--first-n-layers", type=positive_int, default=None, metavar="N",
        help="load only the first N blocks (e.g. 38 for R1's layer-37 SAEs)",
    )
    group.add_argument(
        "--keep-fp8", action="store_true",
        help="keep FP8 checkpoint weights in FP8 in memory, dequantised per forward (R1 on one 8-GPU node)",
    )
    group.add_argument(
        "--memory-per-device", type=memory_size, default=None, metavar="SIZE",
        help="memory of each device for the byte-balanced block plan, e.g. 141GB, 80GiB (DeepSeek-V3/R1; "
        "default: each device's total memory)",
    )  # fmt: skip
    from r1_plugin.drive import BACKENDS, default_backend

    group.add_argument(
        "--backend", choices=BACKENDS, default=default_backend(),
        help="hooked: HookedTransformer (the default on TransformerLens 3.9: SAELens's SAEs and r1_plugin's R1 path "
        "are built on it); bridge: TransformerBridge.boot_transformers (the default, and only path, on "
        "TransformerLens 4)",
    )
    if sae:
        group.add_argument(
            "--sae-device", default=None,
            help="device of the SAE (default: the device of the block the SAE reads)",
        )
        group.add_argument(
            "--sae-dtype", choices=DTYPES, default=None, help="dtype of the SAE (default: the model's dtype)"
        )


def model_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The from_pretrained keywords the flags give (only those given)."""
    kwargs: dict[str, Any] = {}
    for flag in ("dtype", "device", "n_devices", "first_n_layers", "memory_per_device"):
        value = getattr(args, flag, None)
        if value is not None:
            kwargs[flag] = value
    if getattr(args, "keep_fp8", False):
        kwargs["keep_fp8"] = True
    return kwargs


def check_device(device: str | None, flag: str = "--device", n_devices: int = 1) -> None:
    """Raise ModelArgsError for a device string torch cannot parse or a device this machine does not have."""
    import torch

    if device is None and n_devices == 1:
        return
    try:
        dev = torch.device(device if device is not None else "cuda")
    except (RuntimeError, TypeError) as exc:
        raise ModelArgsError(f"{flag} {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): {exc}") from None
    if dev.type == "cuda":
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        first = dev.index or 0
        if first + n_devices > have:
            want = f"devices cuda:{first}..cuda:{first + n_devices - 1}" if n_devices > 1 else f"device {dev}"
            raise ModelArgsError(
                f"{flag} {device or 'cuda'}" + (f" with --n-devices {n_devices}" if n_devices > 1 else "")
                + f" needs {want}, but this machine has {have} CUDA device(s)"
                + ("; use --device cpu" if have == 0 else "")
            )
    elif n_devices > 1:
        raise ModelArgsError(f"--n-devices {n_devices} splits the model over CUDA devices, not {dev.type}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelArgsError(f"{flag} mps: this machine has no MPS device")


def load_model_from_args(args: argparse.Namespace, cls: Any = None, processing: bool = False) -> Any:
    """The model named by `--model`, loaded with the flags' keywords (unprocessed unless `processing`).

    `cls` is HookedTransformer by default (e.g. sae_lens.HookedSAETransformer); without processing the residual
    stream stays what the model computes (no LayerNorm folding), which steering and SAEs need.
    """
    from r1_plugin.drive import ModelDriveError, default_backend, hooked_transformer_available, load_model

    check_device(getattr(args, "device", None), "--device", getattr(args, "n_devices", None) or 1)
    check_device(getattr(args, "sae_device", None), "--sae-device")
    backend = getattr(args, "backend", None) or default_backend()
    if backend == "bridge" or not hooked_transformer_available():  # TL 4 with --backend hooked: a clear error
        sae_lens = getattr(cls, "__module__", "").startswith("sae_lens")  # HookedSAETransformer -> its bridge
        try:
            return load_model(args.model, backend, sae_lens=sae_lens, **model_kwargs_from_args(args))
        except ModelDriveError as exc:
            raise ModelArgsError(str(exc)) from exc
    if cls is None:
        from transformer_lens import HookedTransformer

        cls = HookedTransformer
    loader = cls.from_pretrained if processing else cls.from_pretrained_no_processing
    return loader(args.model, **model_kwargs_from_args(args))


def hook_device(model: Any, hook_name: str) -> Any:
    """The device of the block `hook_name` belongs to (the model's device for hooks outside the blocks)."""
    import torch

    layer = hook_layer(hook_name)
    blocks = getattr(model, "blocks", None)
    if layer is not None and blocks is not None and layer < len(blocks):
        param = next(blocks[layer].parameters(), None)
        if param is not None:
            return param.device
    return torch.device(model.cfg.device)


def add_sae_source_args(group: Any, required: bool = False) -> None:
    """--sae-release and --sae-id (SAE.from_pretrained), or --sae-path (an SAE on disk); `required`: one of them."""
    need = " (this or --sae-path is required)" if required else ""
    group.add_argument("--sae-release", default=None,
                       help=f"SAELens release, e.g. goodfire-deepseek-r1-logic or llama_scope_r1_distill{need}")
    group.add_argument("--sae-id", default=None, help="SAE id within the release (or within --sae-path's sae.yaml)")
    group.add_argument(
        "--sae-path", type=Path, default=None,
        help="an SAE on disk instead of a release: a folder SAELens saved (cfg.json), or a folder with a sae.yaml "
        "release description such as the embedded demo SAE (r1_plugin/assets/tiny-r1-sae)",
    )  # fmt: skip


def sae_source(args: argparse.Namespace, required: bool = False) -> tuple[str | None, str | None, str | None]:
    """(release, sae_id, path) from --sae-release/--sae-id/--sae-path, checked: a release with its id, or a path
    (with an optional id); all None when no SAE was given and none is `required`."""
    release, sae_id, path = args.sae_release, args.sae_id, args.sae_path
    if path is not None:
        if release is not None:
            raise ModelArgsError("give the SAE as --sae-release/--sae-id or as --sae-path (exactly one)")
        from r1_plugin.saes.sae_folders import check_sae_path

        return None, sae_id, str(check_sae_path(path))
    if (release is None) != (sae_id is None):
        raise ModelArgsError("--sae-release and --sae-id go together")
    if required and release is None:
        raise ModelArgsError("this command needs an SAE: --sae-release and --sae-id, or --sae-path")
    return release, sae_id, None


def load_sae_from_args(
    args: argparse.Namespace,
    model: Any,
    release: str | None = None,
    sae_id: str | None = None,
    hook_name: str | None = None,
    path: str | None = None,
) -> Any:
    """`SAE.from_pretrained(release, sae_id)` (or, with `path`, `load_sae_from_path(path, sae_id)`) on
    --sae-device / --sae-dtype.

    Defaults: the model's dtype, and the device of the block the SAE reads (`hook_name`, else the SAE's own
    hook), so that no activation has to cross devices unless --sae-device asks for it.
    """
    from sae_lens import SAE

    dtype = getattr(args, "sae_dtype", None) or str(model.cfg.dtype).removeprefix("torch.")
    device = getattr(args, "sae_device", None)

    def load(on: str) -> Any:
        if path is not None:
            from r1_plugin.saes.sae_folders import load_sae_from_path

            return load_sae_from_path(path, sae_id, device=on, dtype=dtype)
        return SAE.from_pretrained(release, sae_id, device=on, dtype=dtype)

    if device is not None:
        return load(device)
    sae = load("cpu")
    if hook_name is None:
        from r1_plugin.steering.sae_directions import sae_hook_name

        try:
            hook_name = sae_hook_name(sae)
        except ValueError:
            hook_name = ""
    target = hook_device(model, hook_name)
    return sae if target.type == "cpu" else sae.to(target)


_D_MODEL_HOOK = re.compile(r"(^|\.)(hook_resid_(pre|mid|post)|hook_attn_out|hook_mlp_out|hook_embed)$")


def model_config_from_args(args: argparse.Namespace) -> Any:
    """The HookedTransformerConfig `--model` and the flags give, from its config alone (no weight is read)."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    kwargs = {k: v for k, v in model_kwargs_from_args(args).items() if k in ("n_devices", "first_n_layers")}
    return get_pretrained_model_config(args.model, **kwargs)


def load_sae_before_model(
    args: argparse.Namespace, release: str | None, sae_id: str | None, path: str | None, hook_name: str | None = None
) -> Any:
    """The SAE, loaded on the CPU and checked against the model's config before the (slow) model load.

    Raises ModelArgsError when the SAE reads a layer the model does not load (--first-n-layers) or a
    d_model-wide hook with another width (`d_in`); `place_sae` then moves it next to the block it reads.
    """
    from r1_plugin.steering.sae_directions import sae_hook_name

    cfg = model_config_from_args(args)
    dtype = getattr(args, "sae_dtype", None) or getattr(args, "dtype", None) or str(cfg.dtype).removeprefix("torch.")
    if path is not None:
        from r1_plugin.saes.sae_folders import load_sae_from_path

        sae = load_sae_from_path(path, sae_id, device="cpu", dtype=dtype)
    else:
        from sae_lens import SAE

        sae = SAE.from_pretrained(release, sae_id, device="cpu", dtype=dtype)
    try:
        hook = hook_name or sae_hook_name(sae)
    except ValueError:
        return sae  # no hook to compare: the harvest names the problem
    name = path or f"{release}/{sae_id}"
    layer = hook_layer(hook)
    if layer is not None and layer >= cfg.n_layers:
        raise ModelArgsError(
            f"the SAE {name} reads {hook}, but {args.model} loads {cfg.n_layers} layer(s)"
            + (" (--first-n-layers)" if getattr(args, "first_n_layers", None) else "")
            + f": load at least {layer + 1} layers, or pick an SAE of this model"
        )
    d_in = int(sae.cfg.d_in)
    if _D_MODEL_HOOK.search(hook) and d_in != cfg.d_model:
        raise ModelArgsError(
            f"the SAE {name} reads vectors of width d_in={d_in} at {hook}, but {args.model} has "
            f"d_model={cfg.d_model}: this SAE belongs to another model (check --sae-release/--sae-id/--sae-path "
            "and --model)"
        )
    return sae


def place_sae(args: argparse.Namespace, model: Any, sae: Any, hook_name: str | None = None) -> Any:
    """`sae` (from `load_sae_before_model`) on --sae-device / --sae-dtype, by default the model's dtype and the
    device of the block it reads, as `load_sae_from_args` places it."""
    dtype = getattr(args, "sae_dtype", None) or str(model.cfg.dtype).removeprefix("torch.")
    device = getattr(args, "sae_device", None)
    if device is None:
        from r1_plugin.steering.sae_directions import sae_hook_name

        try:
            hook_name = hook_name or sae_hook_name(sae)
        except ValueError:
            hook_name = ""
        device = hook_device(model, hook_name)
    import torch

    return sae.to(device=device, dtype=getattr(torch, dtype))
