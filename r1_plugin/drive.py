"""How a tool drives a model: the one place that knows a HookedTransformer from a TransformerBridge.

Every r1_plugin tool (steering, sweeps, sinks, experiments, demo, CLI) tokenises prompts, generates, runs with
hooks, resolves hook names, reads model facts and tracks positions through `driver(model)`. The two kinds:

- `"hooked"`: TransformerLens's `HookedTransformer` (and SAELens's `HookedSAETransformer`);
- `"bridge"`: TransformerLens's `TransformerBridge` (and SAELens's `SAETransformerBridge`), with or without
  `enable_compatibility_mode()`.

Hook names: the TransformerLens names (`blocks.N.hook_resid_pre/mid/post`, `hook_attn_out`, `hook_mlp_out`) and
the bridge's canonical names (`blocks.N.hook_in/hook_out`, `ln2.hook_in`, `attn.hook_out`, `mlp.hook_out`) are
accepted on both kinds, and a name where SAELens has spliced an SAE in resolves to the SAE's output hook.

Prompts: text that already contains `<think>` is R1 chat text and is encoded as is (it carries its own BOS);
other text is wrapped in R1's chat template when `chat`, else tokenised with the model's own BOS rule.

A model that is neither kind (a plain `nn.Module`, anything without TransformerLens hooks) raises
`ModelDriveError` saying what to pass instead: no tool silently does nothing.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from r1_plugin.errors import R1PluginError

BACKENDS: tuple[str, ...] = ("hooked", "bridge")


def hooked_transformer_available() -> bool:
    """Whether the installed TransformerLens still has HookedTransformer (3.x; TransformerLens 4 removed it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("transformer-lens").split(".")[0]) < 4
    except (PackageNotFoundError, ValueError):
        return False


def default_backend() -> str:
    """"hooked" where TransformerLens has HookedTransformer, else "bridge" (TransformerLens 4's only path).

    HookedTransformer is the default on TransformerLens 3.9: SAELens 6.54 (Goodfire's SAEs, HookedSAETransformer,
    SAE training) and r1_plugin's R1 path (latent MLA KV cache, 71x smaller than the bridge's per-head K/V; FP8
    kept in memory; plan_devices' byte-balanced blocks) are built on it."""
    return "hooked" if hooked_transformer_available() else "bridge"


DEFAULT_BACKEND = default_backend()

# TransformerLens block hook -> the bridge's canonical name for the same activation (both resolve either way).
_TL_TO_BRIDGE: dict[str, str] = {
    "hook_resid_pre": "hook_in",
    "hook_resid_post": "hook_out",
    "hook_resid_mid": "ln2.hook_in",
    "hook_attn_out": "attn.hook_out",
    "hook_mlp_out": "mlp.hook_out",
}
_BRIDGE_TO_TL = {v: k for k, v in _TL_TO_BRIDGE.items()}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SAE_OUT = "hook_sae_output"
_SAE_IN = "hook_sae_input"


class ModelDriveError(R1PluginError, TypeError):
    """A model r1_plugin cannot drive (not a HookedTransformer or TransformerBridge), or a bad way to drive it."""


class HookNameError(ModelDriveError, ValueError):
    """A hook name the model has in neither naming."""


def _loaded_class(module: str, name: str) -> type | None:
    """`module.name` if that module is already imported (never imports TransformerLens itself)."""
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) else None


def model_kind(model: Any) -> str | None:
    """"hooked", "bridge", or None for a model r1_plugin cannot drive."""
    bridge = _loaded_class("transformer_lens.model_bridge.bridge", "TransformerBridge")
    if bridge is not None and isinstance(model, bridge):
        return "bridge"
    hooked = _loaded_class("transformer_lens.HookedTransformer", "HookedTransformer")
    if hooked is not None and isinstance(model, hooked):
        return "hooked"
    return None


def driver(model: Any) -> Driver:
    """The driver of `model`; a `ModelDriveError` saying what to do for anything else."""
    if isinstance(model, Driver):
        return model
    kind = model_kind(model)
    if kind == "bridge":
        return BridgeDriver(model)
    if kind == "hooked":
        return HookedDriver(model)
    raise ModelDriveError(
        f"r1_plugin cannot drive a {type(model).__module__}.{type(model).__name__}: it needs TransformerLens hooks. "
        "Pass a HookedTransformer (HookedTransformer.from_pretrained_no_processing(name), or SAELens's "
        "HookedSAETransformer) or a TransformerBridge (TransformerBridge.boot_transformers(name), or SAELens's "
        "SAETransformerBridge); r1_plugin.drive.load_model(name, backend=...) loads either."
    )


class Driver:
    """What a tool may ask of a model; `driver(model)` picks the subclass for the model's kind."""

    kind = ""

    def __init__(self, model: Any) -> None:
        self.model = model

    # -- model facts -------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (None if it has none)."""
        return getattr(self.model, "tokenizer", None)

    @property
    def model_name(self) -> str | None:
        """The model's name (`cfg.model_name`; a bridge booted from a folder: the folder), as tools record it."""
        return getattr(getattr(self.model, "cfg", None), "model_name", None)

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return int(self.model.cfg.n_layers)

    @property
    def d_vocab(self) -> int:
        """Vocabulary size of the unembedding."""
        return int(self.model.cfg.d_vocab)

    @property
    def device(self) -> Any:
        """The device inputs go to (the first block's for a model split over devices)."""
        import torch

        return torch.device(self.model.cfg.device)

    def block_device(self, layer: int) -> Any:
        """The device of block `layer`'s weights (the model's device if it has none)."""
        blocks = getattr(self.model, "blocks", None)
        if blocks is not None and 0 <= layer < len(blocks):
            param = next(blocks[layer].parameters(), None)
            if param is not None:
                return param.device
        return self.device

    def hook_device(self, hook_name: str) -> Any:
        """The device of the block `hook_name` belongs to (the input device for hooks outside the blocks)."""
        match = _BLOCK.match(hook_name)
        return self.block_device(int(match.group(1))) if match else self.device

    @property
    def hook_dict(self) -> dict[str, Any]:
        """The model's hook points by name."""
        return dict(self.model.hook_dict)

    def pattern_hook_names(self) -> dict[int, str]:
        """Layer -> its attention-pattern hook (`blocks.L.attn.hook_pattern`, `[batch, head, query, key]`)."""
        pattern = re.compile(r"^blocks\.(\d+)\.attn\.hook_pattern$")
        return {int(m.group(1)): name for name in self.model.hook_dict if (m := pattern.match(name))}

    def resid_post_name(self, layer: int) -> str:
        """The hook of block `layer`'s output residual stream, by a name this model has."""
        return self.hook_name(f"blocks.{layer}.hook_resid_post")

    # -- hook names --------------------------------------------------------------------------------------------
    def hook_name(self, name: str) -> str:
        """`name` as this model has it: as given, in the other naming (TransformerLens <-> bridge canonical), or
        where SAELens spliced an SAE in, its output hook. A `ModelDriveError` listing similar hooks otherwise."""
        hooks = self.model.hook_dict
        candidates = self._candidates(name)
        # An SAE spliced in first: SAETransformerBridge leaves an alias pointing at the replaced hook point.
        for candidate in candidates:
            point = hooks.get(candidate)
            for base in dict.fromkeys([candidate, getattr(point, "name", None) or candidate]):
                if f"{base}.{_SAE_OUT}" in hooks:
                    return f"{base}.{_SAE_OUT}"
        for candidate in candidates:
            if candidate in hooks:
                return candidate
        tail = name.split(".")[-1]
        near = [n for n in hooks if n.split(".")[-1] == tail][:5] or list(hooks)[:5]
        raise HookNameError(f"{name!r} is not a hook of this model ({type(self.model).__name__}); e.g. {near}")

    def input_hook_name(self, name: str) -> str:
        """`hook_name(name)`, except that where SAELens spliced an SAE in, the SAE's input hook: the activation as
        the model computed it (what an SAE encodes), not the spliced SAE's reconstruction."""
        hook = self.hook_name(name)
        return hook[: -len(_SAE_OUT)] + _SAE_IN if hook.endswith(f".{_SAE_OUT}") else hook

    def _candidates(self, name: str) -> list[str]:
        out = [name]
        match = _BLOCK.match(name)
        if match:
            layer, rest = match.groups()
            other = _TL_TO_BRIDGE.get(rest) or _BRIDGE_TO_TL.get(rest)
            if other is not None:
                out.append(f"blocks.{layer}.{other}")
        return out

    def same_hook(self, a: str, b: str) -> bool:
        """Whether two hook names name the same activation on this model."""
        try:
            return self.hook_name(a) == self.hook_name(b) or (
                self.model.hook_dict[self.hook_name(a)] is self.model.hook_dict[self.hook_name(b)]
            )
        except HookNameError:
            return False

    # -- tokens ------------------------------------------------------------------------------------------------
    def prompt_tokens(self, prompt: Any, chat: bool = True) -> Any:
        """`[1, seq]` ids on the model's device: a user message in R1's chat format (`chat`), R1 chat text as is
        (any text containing `<think>`: it carries its own BOS), raw text, or ids given as they are."""
        import torch

        from r1_plugin.chat import THINK_OPEN, r1_chat_tokens

        if isinstance(prompt, torch.Tensor):
            ids = prompt if prompt.dim() == 2 else prompt.unsqueeze(0)
            if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0 or ids.is_floating_point():
                raise ModelDriveError(
                    f"a prompt must be one non-empty sequence of token ids, got shape {tuple(prompt.shape)}"
                )
            return ids.to(self.device)
        if not isinstance(prompt, str) or not prompt:
            raise ModelDriveError(f"a prompt must be a non-empty string or [1, seq] token ids, got {prompt!r}")
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise ModelDriveError("text prompts need a model with a tokenizer: set model.tokenizer or pass token ids")
        if THINK_OPEN in prompt:  # already R1 chat text: encode as is (it carries its own BOS)
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            return ids.to(self.device)
        if chat:
            return r1_chat_tokens(tokenizer, prompt).to(self.device)
        return self.model.to_tokens(prompt).to(self.device)

    def text_tokens(self, text: str, prepend_bos: bool = True) -> Any:
        """`[1, seq]` ids of raw `text` on the model's device, never truncated, with at most one BOS: text that
        already starts with BOS (R1's chat helpers emit it, e.g. `format_r1_prompt`) gets none added."""
        bos = getattr(self.tokenizer, "bos_token", None)
        if prepend_bos and bos and text.startswith(bos):
            prepend_bos = False
        return self.model.to_tokens(text, prepend_bos=prepend_bos, truncate=False).to(self.device)

    def decode(self, ids: Any) -> str:
        """Text of a 1-D id sequence, special tokens kept."""
        return str(self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False))

    # -- running -----------------------------------------------------------------------------------------------
    def generate(
        self,
        tokens: Any,
        max_new_tokens: int,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        stop_at_eos: bool = True,
        use_past_kv_cache: bool = True,
        padding_side: str | None = None,
        output_logits: bool = False,
        **kwargs: Any,
    ) -> Any:
        """`model.generate` on ids `[batch, seq]` with the keywords both kinds share; returns ids `[batch, seq +
        n]` (or, with `output_logits`, the model output with `.sequences` and per-step `.logits`).
        Sampling needs a temperature > 0 (greedy ignores it)."""
        import torch

        from r1_plugin.values import integer, positive

        integer("max_new_tokens", max_new_tokens, at_least=0)
        if do_sample:
            positive("temperature", temperature)
        call: dict[str, Any] = dict(
            max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample), stop_at_eos=stop_at_eos,
            use_past_kv_cache=use_past_kv_cache, verbose=False, **kwargs,
        )
        if do_sample:
            call["temperature"] = float(temperature)
        if padding_side is not None:
            call["padding_side"] = padding_side
        if output_logits:
            call.update(output_logits=True, return_type="tokens")
        elif self.kind == "hooked":
            call["return_type"] = "tokens"
        with torch.no_grad():
            return self.model.generate(tokens, **call)

    def generate_greedy(self, tokens: Any, max_new_tokens: int) -> Any:
        """Greedy KV-cached generation of one sequence, stopping at EOS: prompt + continuation ids `[1, seq]`."""
        return self.generate(tokens, max_new_tokens)

    def eos_id(self) -> int | None:
        """The tokenizer's EOS id, if any."""
        return getattr(self.tokenizer, "eos_token_id", None)

    def trace(self, tokens: Any, max_new_tokens: int) -> Any:
        """The greedy continuation of `tokens` `[1, seq]` cut after the first generated EOS (what follows it is
        padding from generate)."""
        seq = self.generate_greedy(tokens, max_new_tokens).clone()
        eos = self.eos_id()
        if eos is not None:
            hits = (seq[0, tokens.shape[1] :] == eos).nonzero()
            if len(hits):
                seq = seq[:, : tokens.shape[1] + int(hits[0]) + 1]
        return seq

    def hooks(self, fwd_hooks: Sequence[tuple[str, Callable[..., Any]]]) -> Any:
        """Context manager with `fwd_hooks` attached (names resolved for this model)."""
        return self.model.hooks(fwd_hooks=[(self.hook_name(n), fn) for n, fn in fwd_hooks])

    def forward(self, tokens: Any, attention_mask: Any = None, return_type: str | None = "logits", *,
                stop_at_layer: int | None = None) -> Any:
        """One forward pass over ids `[batch, seq]` (padding given by `attention_mask`); with `stop_at_layer`,
        only blocks before it run (and the residual stream there is returned)."""
        kwargs: dict[str, Any] = {"return_type": return_type}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if stop_at_layer is not None:
            kwargs["stop_at_layer"] = stop_at_layer
        return self.model(tokens, **kwargs)

    def run_with_cache(self, tokens: Any, names: Sequence[str]) -> tuple[Any, dict[str, Any]]:
        """(logits, {name as asked: activation}) of one forward pass, caching only `names`."""
        resolved = {name: self.hook_name(name) for name in names}
        logits, cache = self.model.run_with_cache(tokens, names_filter=list(dict.fromkeys(resolved.values())))
        return logits, {name: cache[hook] for name, hook in resolved.items()}

    def run_chunked(self, tokens: Any, attention_mask: Any, chunk_size: int, *, stop_at_layer: int | None = None
                    ) -> None:
        """Run ids `[batch, seq]` in query chunks of `chunk_size` over the model's KV cache (outputs dropped):
        each attention row is computed once, and a layer only ever materialises `[batch, head, chunk, seq]`.
        With `stop_at_layer`, only blocks before it run (their cache is all the later chunks need)."""
        raise NotImplementedError

    def hook_activations(self, tokens: Any, attention_mask: Any, hook_name: str, chunk_size: int | None = None
                         ) -> Any:
        """`[batch, seq, d]` activations at `hook_name` of right-padded ids `tokens`, running only the blocks up
        to the hook's. With `chunk_size`, in query chunks over the model's KV cache (`run_chunked`): no layer holds
        more than `[batch, head, chunk_size, seq]` attention scores, so memory grows linearly with the prompt, and
        the activations equal one forward's to float rounding (the attention matmuls have other shapes)."""
        hook = self.hook_name(hook_name)
        match = _BLOCK.match(hook)
        stop = int(match.group(1)) + 1 if match else None
        parts: list[Any] = []

        def grab(act: Any, hook: Any) -> None:
            parts.append(act.detach())

        with self.hooks([(hook, grab)]):
            if chunk_size is None or tokens.shape[1] <= chunk_size:
                self.forward(tokens, attention_mask, return_type=None, stop_at_layer=stop)
            else:
                self.run_chunked(tokens, attention_mask, chunk_size, stop_at_layer=stop)
        if not parts:
            raise HookNameError(f"hook {hook_name!r} never ran in a forward pass of this model")
        import torch

        acts = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if acts.dim() != 3 or acts.shape[:2] != tokens.shape:
            raise HookNameError(f"hook {hook_name!r} gives {tuple(acts.shape)}, not [batch, seq, d] activations")
        return acts

    def logits_over_cache(self, chunks: Sequence[Any]) -> Any:
        """Logits `[batch, sum of lengths, vocab]` of running unpadded id chunks one after another over one KV
        cache (e.g. a prompt, then its continuation in one step, as a cached generation runs them)."""
        raise NotImplementedError

    # -- position tracking -------------------------------------------------------------------------------------
    def attach_observer(self, observer: Any) -> Callable[[], None]:
        """Attach a position observer (see `r1_plugin.steering.tracker`); returns the function that detaches it."""
        raise NotImplementedError


class HookedDriver(Driver):
    """A HookedTransformer (or SAELens's HookedSAETransformer)."""

    kind = "hooked"

    def run_chunked(self, tokens: Any, attention_mask: Any, chunk_size: int, *, stop_at_layer: int | None = None
                    ) -> None:
        """See `Driver.run_chunked`: TransformerLens's cache (r1_plugin's latent cache for DeepSeek-V3)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.model.cfg.device, tokens.shape[0])
        for start in range(0, tokens.shape[1], chunk_size):
            stop = min(tokens.shape[1], start + chunk_size)
            self.model(tokens[:, start:stop], attention_mask=attention_mask[:, start:stop], past_kv_cache=cache,
                       return_type=None, stop_at_layer=stop_at_layer)

    def logits_over_cache(self, chunks: Sequence[Any]) -> Any:
        """See `Driver.logits_over_cache`: TransformerLens's cache (the latent cache for DeepSeek-V3)."""
        import torch
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        chunks = [c for c in chunks if c.shape[1]]
        cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.model.cfg.device, chunks[0].shape[0])
        return torch.cat([self.model(c, past_kv_cache=cache) for c in chunks], dim=1)

    def attach_observer(self, observer: Any) -> Callable[[], None]:
        """`observer.begin_forward/end_forward` around every forward and `begin/end_generation` around every
        generate call (r1_plugin._patches.tl_generation), and `observer.on_embed(ids)` for every embedded id chunk
        (a pre-hook on `model.embed`: `generate` embeds tokens itself and feeds residuals to `forward`)."""
        import torch

        from r1_plugin._patches import tl_generation

        _require_patch("tl_generation")
        embed = getattr(self.model, "embed", None)
        handle = None
        if isinstance(embed, torch.nn.Module):
            handle = embed.register_forward_pre_hook(lambda module, args: observer.on_embed(args[0] if args else None))
        self.model.__dict__[tl_generation.OBSERVER_ATTR] = observer

        def detach() -> None:
            if handle is not None:
                handle.remove()
            if self.model.__dict__.get(tl_generation.OBSERVER_ATTR) is observer:
                del self.model.__dict__[tl_generation.OBSERVER_ATTR]

        return detach


class BridgeDriver(Driver):
    """A TransformerBridge (or SAELens's SAETransformerBridge), with or without compatibility mode."""

    kind = "bridge"

    @property
    def device(self) -> Any:
        """The device of the HF model's input embeddings (where input ids go)."""
        import torch

        hf = self.model.original_model
        embed = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
        param = next(embed.parameters(), None) if embed is not None else None
        return param.device if param is not None else torch.device(self.model.cfg.device)

    def run_chunked(self, tokens: Any, attention_mask: Any, chunk_size: int, *, stop_at_layer: int | None = None
                    ) -> None:
        """See `Driver.run_chunked`: transformers' own cache, each chunk given the mask of everything so far (a
        stopped forward fills the cache of the blocks that ran, the only ones the next chunk runs)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.original_model.config)
        for start in range(0, tokens.shape[1], chunk_size):
            stop = min(tokens.shape[1], start + chunk_size)
            self.model(tokens[:, start:stop], attention_mask=attention_mask[:, :stop], past_key_values=cache,
                       use_cache=True, return_type=None, stop_at_layer=stop_at_layer)

    def logits_over_cache(self, chunks: Sequence[Any]) -> Any:
        """See `Driver.logits_over_cache`: transformers' own cache."""
        import torch
        from transformers import DynamicCache

        chunks = [c for c in chunks if c.shape[1]]
        cache = DynamicCache(config=self.model.original_model.config)
        return torch.cat([self.model(c, past_key_values=cache, use_cache=True) for c in chunks], dim=1)

    def attach_observer(self, observer: Any) -> Callable[[], None]:
        """`observer.begin_hf_forward(args, kwargs)` / `end_forward()` around every forward of the bridge's HF
        model (torch hooks: they see input ids, attention mask and KV cache of `bridge(...)`, `bridge.generate`
        and `hf_generate` alike), `begin/end_generation` around every bridge generate call
        (r1_plugin._patches.tl_bridge_generation)."""
        from r1_plugin._patches import tl_bridge_generation

        _require_patch("tl_bridge_generation")
        hf = self.model.original_model
        pre = hf.register_forward_pre_hook(lambda module, args, kwargs: observer.begin_hf_forward(args, kwargs),
                                           with_kwargs=True)
        post = hf.register_forward_hook(lambda module, args, output: observer.end_forward(), always_call=True)
        self.model.__dict__[tl_bridge_generation.OBSERVER_ATTR] = observer

        def detach() -> None:
            pre.remove()
            post.remove()
            if self.model.__dict__.get(tl_bridge_generation.OBSERVER_ATTR) is observer:
                del self.model.__dict__[tl_bridge_generation.OBSERVER_ATTR]

        return detach


def _require_patch(name: str) -> None:
    """A clear error when the patch that reports generation boundaries is not applied (positions would be lost)."""
    from r1_plugin import _patches

    status = _patches.patch_status().get(name, "")
    if status == "applied":
        return
    if status.startswith("pending"):
        _patches.apply_module(name)
        return
    raise ModelDriveError(
        f"r1_plugin's patch {name} is not applied ({status or 'unknown'}), so positions under generation cannot "
        "be tracked and position-gated steering would silently do nothing. Run `r1-plugin doctor` and install the "
        "TransformerLens version r1_plugin is tested with."
    )


# -- loading ---------------------------------------------------------------------------------------------------
def check_backend(backend: str) -> str:
    """`backend` if it is one of BACKENDS, else a ModelDriveError naming them."""
    if backend not in BACKENDS:
        raise ModelDriveError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return backend


def load_model(name: str, backend: str | None = None, *, sae_lens: bool = False, **kwargs: Any) -> Any:
    """Load `name` (an R1/distill name or a local folder) as a HookedTransformer (`backend="hooked"`, unprocessed)
    or a TransformerBridge (`"bridge"`, `TransformerBridge.boot_transformers`); `sae_lens=True` gives SAELens's
    HookedSAETransformer / SAETransformerBridge. `kwargs` are the loader's keywords (device, dtype, n_devices,
    keep_fp8, ...; first_n_layers and memory_per_device only for "hooked"); a keyword the loader lacks is an
    error. `backend=None` is `default_backend()`."""
    backend = check_backend(default_backend() if backend is None else backend)
    if backend == "hooked":
        if not hooked_transformer_available():
            from importlib.metadata import version

            raise ModelDriveError(
                f"HookedTransformer was removed in TransformerLens 4 (installed: {version('transformer-lens')}): "
                "use backend='bridge' (`--backend bridge`), or install transformer-lens 3.9 for the hooked path"
            )
        if sae_lens:
            from sae_lens import HookedSAETransformer as cls
        else:
            from transformer_lens import HookedTransformer as cls
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # HookedTransformer's TL 4 notice
            return cls.from_pretrained_no_processing(name, **kwargs)
    if sae_lens:
        from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge as bridge_cls
    else:
        from transformer_lens.model_bridge import TransformerBridge as bridge_cls
    import torch

    dtype = kwargs.pop("dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is not None:
        kwargs["dtype"] = dtype
    unsupported = sorted(set(kwargs) & {"first_n_layers", "memory_per_device", "fold_ln", "center_writing_weights"})
    if unsupported:
        raise ModelDriveError(
            f"{', '.join(unsupported)} is not available on the bridge backend (TransformerBridge.boot_transformers); "
            "use backend='hooked' for it"
        )
    model = bridge_cls.boot_transformers(_bridge_source(name), **kwargs)
    model.eval()
    return model


def _bridge_source(name: str) -> str:
    """What `boot_transformers` should load for `name`: a local folder as is, a registered R1 name as its HF id."""
    from pathlib import Path

    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    from r1_plugin.models.registry import lookup

    spec = lookup(name)
    return spec.hf_id if spec is not None else name
