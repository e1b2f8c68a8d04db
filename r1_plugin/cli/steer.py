"""`r1-plugin steer`: generate with and without gated steering and print both continuations side by side.

    r1-plugin steer --model deepseek-ai/DeepSeek-R1-Distill-Llama-8B \\
        --sae-release llama_scope_r1_distill --sae-id <id> --feature 1234 --strength 8 \\
        --gate prefix --prompt "What is 7 times 8?"
    r1-plugin steer --model <name> --direction vec.pt --hook blocks.19.hook_resid_post --strength 4 --gate always ...
    r1-plugin steer ... --sweep 0,2,4,8,16      # over-steering sweep with reversion flags instead
    r1-plugin steer --model deepseek-ai/DeepSeek-R1 --dtype bfloat16 --keep-fp8 --n-devices 8 \
        --first-n-layers 38 --sae-release goodfire-deepseek-r1-logic --sae-id layer_37 --feature 1234 ...

The model flags (--dtype, --device, --n-devices, --first-n-layers, --keep-fp8, --sae-device, --sae-dtype) mean
what the keywords of `HookedTransformer.from_pretrained` mean (r1_plugin/cli/_model_args.py).
"""

from __future__ import annotations

import argparse
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

from r1_plugin.errors import R1PluginError


class SteerCLIError(R1PluginError, ValueError):
    """A bad combination of `r1-plugin steer` arguments or an unreadable direction file."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `steer` subcommand."""
    from r1_plugin.cli._model_args import add_model_args, add_sae_source_args
    from r1_plugin.cli._values import count, finite_float, finite_floats, gate, positive_float
    from r1_plugin.tracking import add_tracking_args

    parser = subparsers.add_parser(
        "steer",
        help="generate with and without gated steering (direction or SAE feature) and compare",
        description=(
            "Steers at a hook only where the gate is open (default: after R1's response prefix, the first sentence "
            "of its thinking), exactly under KV-cache generation, and prints the unsteered and steered "
            "continuations side by side with where the gate opened. --prompt is a user message put in R1's chat "
            "format (ending in '<think>\\n'); --raw uses the text as is."
        ),
    )
    parser.add_argument("--prompt", required=True, help="user message (or, with --raw, the exact text)")
    parser.add_argument("--raw", action="store_true", help="do not apply R1's chat template")
    src = parser.add_argument_group("what to steer with (an SAE feature or a saved direction)")
    add_sae_source_args(src)
    src.add_argument("--feature", type=count(at_least=0), nargs="+", default=None, help="SAE feature id(s)")
    src.add_argument("--direction", type=Path, default=None,
                     help="saved direction: .pt (tensor, or dict with 'direction' [and 'hook_name']) or .npy")
    src.add_argument("--hook", default=None, help="hook name (default: the SAE's / the direction file's)")
    how = parser.add_argument_group("how")
    how.add_argument("--strength", type=finite_float, default=8.0, help="multiplier (clamp value with --mode clamp)")
    how.add_argument("--mode", choices=("add", "clamp", "ablate"), default="add",
                     help="add the direction; clamp/ablate the SAE feature through the SAE error term")
    how.add_argument("--normalize", action="store_true", help="use the unit direction")
    how.add_argument("--relative", action="store_true", help="strength as a fraction of the residual norm")
    how.add_argument("--gate", type=gate, default="prefix",
                     help="prefix[:sentence|newline][:N], always, generated, pos:N, text:..., regex:... "
                          "(default: prefix)")
    how.add_argument("--max-new-tokens", type=count(), default=128)
    how.add_argument("--sample", action="store_true", help="sample (same seed for both runs) instead of greedy")
    how.add_argument("--temperature", type=positive_float, default=0.6, help="sampling temperature, > 0")
    how.add_argument("--seed", type=count(at_least=0), default=0)
    how.add_argument("--no-cache", action="store_true", help="generate without the KV cache (slower, same result)")
    how.add_argument("--sweep", type=finite_floats, default=None,
                     help="comma-separated strengths: run a sweep and print its table")
    how.add_argument("--width", type=count(at_least=40), default=None, help="output width (default: the terminal's)")
    add_model_args(parser)
    add_tracking_args(parser)
    return parser


def load_direction(path: Path) -> tuple[Any, str | None]:
    """A direction vector and the hook name stored with it (if any) from a .pt / .npy file."""
    import torch

    if not path.is_file():
        raise SteerCLIError(f"direction file {path} does not exist")
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path, allow_pickle=False)).float(), None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code, or not a torch file
        raise SteerCLIError(
            f"could not read {path} as a weights-only torch file ({exc}); save it with "
            "torch.save({'direction': vec, 'hook_name': name}, path)"
        ) from exc
    if isinstance(obj, dict):
        if "direction" not in obj:
            raise SteerCLIError(f"{path} holds a dict without a 'direction' key (keys: {sorted(obj)})")
        return obj["direction"].float(), obj.get("hook_name")
    if isinstance(obj, torch.Tensor):
        return obj.float(), None
    raise SteerCLIError(f"{path} holds a {type(obj).__name__}, not a tensor or a dict with 'direction'")


def side_by_side(left: str, right: str, width: int, titles: tuple[str, str] = ("unsteered", "steered")) -> str:
    """Two texts in two wrapped columns."""
    col = max(20, (width - 3) // 2)

    def wrap(text: str) -> list[str]:
        lines: list[str] = []
        for para in text.split("\n"):
            lines.extend(textwrap.wrap(para, col, replace_whitespace=False, drop_whitespace=False) or [""])
        return lines

    a, b = wrap(left), wrap(right)
    out = [f"{titles[0]:<{col}} | {titles[1]}", f"{'-' * col}-+-{'-' * col}"]
    for i in range(max(len(a), len(b))):
        out.append(f"{(a[i] if i < len(a) else ''):<{col}} | {b[i] if i < len(b) else ''}")
    return "\n".join(out)


def describe_gate(model: Any, tokens: Any, open_at: int | None, gate: Any, n_prompt: int) -> str:
    """Where the gate opened, with the text just before it."""
    if open_at is None:
        return f"gate {gate!r} never opened: nothing was steered"
    before = model.tokenizer.decode(tokens[max(0, open_at - 12) : open_at])
    at = model.tokenizer.decode(tokens[open_at : open_at + 1])
    where = "in the prompt" if open_at < n_prompt else f"at generated token {open_at - n_prompt}"
    return f"gate {gate!r} opened at position {open_at} ({where}): ...{before!r} | {at!r}"


def run(args: argparse.Namespace) -> int:
    """Load the model and the direction/SAE, generate unsteered and steered, print them, log to W&B."""
    from r1_plugin.chat import THINK_OPEN, format_r1_prompt
    from r1_plugin.cli._errors import check_tracking_args
    from r1_plugin.cli._model_args import load_model_from_args, load_sae_from_args, sae_source
    from r1_plugin.steering import as_gate
    from r1_plugin.tracking import tracker_from_args

    check_tracking_args(args)  # a bad W&B mode fails before the model loads
    use_sae = any(x is not None for x in (args.sae_release, args.sae_id, args.sae_path))
    if use_sae == (args.direction is not None):
        raise SteerCLIError("give either --sae-release/--sae-id (or --sae-path) with --feature, or --direction (exactly one)")
    release, sae_id, sae_path = sae_source(args)
    if use_sae and not args.feature:
        raise SteerCLIError("steering by SAE needs --feature")
    if args.mode != "add" and not use_sae:
        raise SteerCLIError(f"--mode {args.mode} works on SAE features: pass --sae-release/--sae-id/--feature")
    try:
        gate = as_gate(args.gate)
    except (ValueError, re.error) as exc:  # regex:( does not compile: re.error is no ValueError
        raise SteerCLIError(f"--gate {args.gate!r}: {exc}") from None

    steer_kwargs: dict[str, Any] = dict(mode=args.mode, normalize=args.normalize, relative=args.relative)
    if not use_sae:  # read the direction file before the (slow) model load, so a bad file fails at once
        vec, stored_hook = load_direction(args.direction)
        hook = args.hook or stored_hook
        if hook is None:
            raise SteerCLIError(f"{args.direction} has no hook_name: pass --hook (e.g. blocks.12.hook_resid_post)")
        steer_kwargs.update(direction=vec, hook_name=hook)
        what = f"direction {args.direction}"
    model = load_model_from_args(args)
    if use_sae:
        sae = load_sae_from_args(args, model, release, sae_id, hook_name=args.hook, path=sae_path)
        features = args.feature[0] if len(args.feature) == 1 else args.feature
        steer_kwargs.update(sae=sae, feature=features, hook_name=args.hook)
        what = f"{sae_path or release}/{sae_id or ''} feature {args.feature}"

    from r1_plugin.drive import driver

    text = args.prompt if args.raw or THINK_OPEN in args.prompt else format_r1_prompt(model, args.prompt)
    tokens = driver(model).prompt_tokens(text, chat=False)  # R1 chat text as is; raw text with the model's BOS
    n_prompt = tokens.shape[1]
    width = args.width or shutil.get_terminal_size((120, 40)).columns
    config = dict(model=args.model, what=what, strength=args.strength, gate=repr(gate), mode=args.mode,
                  max_new_tokens=args.max_new_tokens, prompt=args.prompt, sample=args.sample)

    with tracker_from_args(args, "steer", config) as tracker:
        try:
            return _generate_and_show(args, model, tokens, gate, steer_kwargs, text, what, n_prompt, width, tracker)
        except ValueError as exc:  # steer/sweep argument checks: a feature id, hook or direction shape that is wrong
            raise SteerCLIError(str(exc)) from exc


def _generate_and_show(
    args: argparse.Namespace, model: Any, tokens: Any, gate: Any, steer_kwargs: dict[str, Any], text: str,
    what: str, n_prompt: int, width: int, tracker: Any,
) -> int:
    """The sweep table, or the unsteered and steered continuations side by side (logged to `tracker`)."""
    import warnings

    import torch

    from r1_plugin.steering import GateNeverOpenedWarning, steer

    if args.sweep:
        from r1_plugin.steering.sweep import sweep_strengths

        strengths = args.sweep  # finite numbers, checked by the flag's type
        result = sweep_strengths(model, tokens, strengths, gate=gate, max_new_tokens=args.max_new_tokens,
                                 tracker=tracker, **steer_kwargs)
        cols = ["strength", "gate_open_at", "feature_act", "kl", "reverted", "text"]
        with_text = result.table.assign(text=result.table["text"].str.slice(0, 60).str.replace("\n", " "))
        print(with_text[cols].to_string(index=False))
        return 0
    from r1_plugin.drive import driver

    drv = driver(model)
    gen = dict(use_past_kv_cache=not args.no_cache, do_sample=args.sample, temperature=args.temperature,
               stop_at_eos=True)
    with torch.no_grad():
        torch.manual_seed(args.seed)
        plain = drv.generate(tokens, args.max_new_tokens, **gen)  # a sampling temperature <= 0 is refused here
        torch.manual_seed(args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GateNeverOpenedWarning)
            with steer(model, strength=args.strength, gate=gate, **steer_kwargs) as result:
                steered = drv.generate(tokens, args.max_new_tokens, **gen)
    open_at = result.open_at[0]
    unsteered_text = model.tokenizer.decode(plain[0, n_prompt:])
    steered_text = model.tokenizer.decode(steered[0, n_prompt:])
    print(f"model: {args.model}   steering: {what} x {args.strength} ({args.mode}) at "
          f"{result.hook_name}")
    print(f"prompt: {text!r}")
    print(describe_gate(model, steered[0], open_at, gate, n_prompt))
    print(side_by_side(unsteered_text, steered_text, width))
    tracker.log_generations([dict(prompt=text, unsteered=unsteered_text, steered=steered_text,
                                  gate_position=open_at, strength=args.strength)])
    return 0
