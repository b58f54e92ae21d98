"""A stand-in for a second device in CPU-only tests: the `meta` device plus a dispatch mode.

Run the pipeline with its backbone on `meta` inside `DeviceMixCheck()`: every aten op whose
tensor arguments sit on two devices is recorded (copies excepted), as it would fail on CUDA.
Meta tensors hold no values, so the mode answers the few places where values must leave the
device (`.item()`, `.to("cpu")`) with zeros: the code runs on to the end, every branch taking
the zero path.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_SCALARS = {torch.ops.aten._local_scalar_dense, torch.ops.aten.is_nonzero, torch.ops.aten.item}
_COPIES = {torch.ops.aten._to_copy, torch.ops.aten.copy_, torch.ops.aten.to}


def _target_device(args, kwargs) -> torch.device | None:
    """Where a copy op sends its tensor (`.to(...)` has several overloads, inference mode keeps them)."""
    if kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    for a in args[1:]:
        if isinstance(a, (torch.device, str)):
            return torch.device(a)
        if isinstance(a, torch.Tensor):
            return a.device
    return None


class DeviceMixCheck(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.mixed: list[str] = []
        self.meta_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        # A 0-dim CPU tensor is a scalar that torch lets any device use.
        devices = {t.device.type for t in tensors if not (t.dim() == 0 and t.device.type == "cpu")}
        if "meta" in devices:
            self.meta_ops += 1
        copy = func.overloadpacket in _COPIES
        if len(devices) > 1 and not copy:
            self.mixed.append(f"{func}: {sorted(devices)}")
        if func.overloadpacket in _SCALARS and args[0].device.type == "meta":
            return False if args[0].dtype == torch.bool or func.overloadpacket is torch.ops.aten.is_nonzero else 0
        if copy and func.overloadpacket is not torch.ops.aten.copy_ and args[0].device.type == "meta":
            target = _target_device(args, kwargs)
            if target is not None and target.type == "cpu":
                dtype = kwargs.get("dtype") or next((a for a in args[1:] if isinstance(a, torch.dtype)), args[0].dtype)
                return torch.zeros(args[0].shape, dtype=dtype)
        return func(*args, **kwargs)
