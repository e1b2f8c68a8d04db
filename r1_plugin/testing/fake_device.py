"""A second device on a CPU-only machine, for tests: tensors that say they live on another device and fail as torch
does when an op mixes them with tensors of a real device.

    with FakeSecondDevice():
        sae = put_on_fake_device(sae)      # its weights now report `FAKE_DEVICE` (cuda:7)
        sae.encode(cpu_activation)         # RuntimeError: ... on different devices (as on two GPUs)
        feats = sae.encode(cpu_activation.to(device=sae.W_dec.device))   # works; reports cuda:7 too
        feats.to(device="cpu")             # back to a plain CPU tensor

The data never leaves the CPU; only the label moves, through `.to(...)`, exactly where a real move is needed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

FAKE_DEVICE = torch.device("cuda", 7)


def _target_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.device | None, tuple, dict]:
    """The device a `Tensor.to(...)` call asks for, and the call's arguments without it."""
    device = kwargs.pop("device", None)
    rest = []
    for arg in args:
        if isinstance(arg, (str, torch.device)):
            device = arg
        elif isinstance(arg, torch.Tensor):
            device = arg.device
            rest.append(arg.dtype)
        else:
            rest.append(arg)
    return (None if device is None else torch.device(device)), tuple(rest), kwargs


class OnFakeDevice(torch.Tensor):
    """A CPU tensor labelled as living on `FAKE_DEVICE` (what the label means is enforced by `FakeSecondDevice`)."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, data: torch.Tensor) -> OnFakeDevice:
        return torch.Tensor._make_subclass(cls, data, data.requires_grad)


def _on_fake(t: Any) -> bool:
    return isinstance(t, OnFakeDevice)


class FakeSecondDevice(TorchFunctionMode):
    """While active: `OnFakeDevice` tensors report `FAKE_DEVICE`, `.to(device=FAKE_DEVICE)` labels (no copy), and
    an op mixing a labelled tensor with a real-device one raises torch's device-mismatch error."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func == torch.Tensor.device.__get__:
            return FAKE_DEVICE if _on_fake(args[0]) else func(*args)
        if func is torch.Tensor.to:
            device, rest, kwargs = _target_device(args[1:], kwargs)
            out = func(args[0], *rest, **kwargs)
            to_fake = _on_fake(args[0]) if device is None else device == FAKE_DEVICE
            if device is not None and not to_fake and device.type != "cpu":
                raise RuntimeError(f"fake device test: a move to {device}, which this test does not have")
            return OnFakeDevice(out) if to_fake else out.as_subclass(torch.Tensor)
        if func is torch.Tensor.cpu:
            return func(*args, **kwargs).as_subclass(torch.Tensor)
        made_there = kwargs.get("device") is not None and torch.device(kwargs["device"]) == FAKE_DEVICE
        if made_there:  # a factory (torch.full(..., device=...)): made on the CPU, labelled
            kwargs["device"] = "cpu"
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        fake = made_there or any(_on_fake(t) for t in tensors)
        on_real = [t for t in tensors if not _on_fake(t) and t.dim() > 0]  # 0-d CPU scalars mix, as in torch
        if fake and on_real:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found tensors on {FAKE_DEVICE} and "
                f"{on_real[0].device} ({getattr(func, '__name__', func)})"
            )
        out = func(*args, **kwargs)
        if not fake:
            return out
        return tree_map(lambda t: OnFakeDevice(t) if type(t) is torch.Tensor else t, out)


def put_on_fake_device(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every parameter and buffer on the fake device (in place; also updates an SAE's `.device`)."""
    with torch.no_grad():
        for owner in module.modules():
            for name, param in list(owner._parameters.items()):
                if param is not None:
                    owner._parameters[name] = torch.nn.Parameter(OnFakeDevice(param.data), param.requires_grad)
            for name, buf in list(owner._buffers.items()):
                if buf is not None:
                    owner._buffers[name] = OnFakeDevice(buf)
    if hasattr(module, "device"):
        module.device = FAKE_DEVICE
    cfg = getattr(module, "cfg", None)
    if cfg is not None and hasattr(cfg, "device"):
        cfg.device = str(FAKE_DEVICE)
    return module
