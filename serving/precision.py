"""Which precision the backbone runs in, and the check that it decides as fp32 does.

bf16 where the hardware computes it natively: a CUDA device with bf16 support, or a CPU whose
flags include `avx512_bf16` or `amx_bf16` (read from /proc/cpuinfo, never assumed). Elsewhere
fp32: emulated bf16 is slower than fp32. The weights are held in bf16 (on a 2-core Xeon with
AMX, a DINOv3 ViT-S/16 at batch 8 ran 2.4x fp32 that way, 1.8x under autocast); the final
norm, pooling, heads and OOD checks always run in fp32 (`EncoderView.pool`, the heads cast
their input), because a bf16 norm moves pooled features enough to flip decisions.

The setting AADS_PRECISION (auto|fp32|bf16) wins over the manifest's `backbone.dtype`. Either
way bf16 must agree with fp32 on at least AGREEMENT_TARGET of the decisions: the set's build
measures it on its held-out images (`dtype_agreement` in model_set.json) where it ran bf16;
a set built without bf16 is checked at start on its golden images instead (fp32 then bf16).
Below the target the set is served in fp32, with one log line saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

AGREEMENT_TARGET = 0.995
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty when the file is unreadable, e.g. not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_native_bf16(flags: frozenset[str] | None = None) -> str | None:
    """The flag that gives this CPU native bf16 arithmetic, or None."""
    flags = cpu_flags() if flags is None else flags
    return next((f for f in NATIVE_BF16_CPU_FLAGS if f in flags), None)


@dataclass(frozen=True)
class Precision:
    """The dtype chosen for the backbone and why (what /v1/version reports)."""

    dtype: torch.dtype
    requested: str          # auto | float32 | bfloat16
    source: str             # "AADS_PRECISION" or "manifest"
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def choose(device: torch.device, requested: str = "auto", source: str = "manifest",
           flags: frozenset[str] | None = None) -> Precision:
    """bf16 on hardware with native bf16 when `requested` is auto; the requested dtype otherwise."""
    if requested not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision {requested!r}: expected auto, float32 or bfloat16")
    if requested != "auto":
        return Precision(DTYPES[requested], requested, source, f"forced by {source}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, requested, source, "CUDA device with bf16 support")
        return Precision(torch.float32, requested, source, "CUDA device without bf16 support")
    if device.type != "cpu":
        return Precision(torch.float32, requested, source, f"no native bf16 known for {device.type} devices")
    flag = cpu_native_bf16(flags)
    if flag:
        return Precision(torch.bfloat16, requested, source, f"CPU has {flag}")
    return Precision(torch.float32, requested, source, "CPU without avx512_bf16/amx_bf16")


def decisions_agreement(a: list[tuple], b: list[tuple]) -> float:
    """Share of equal decisions (decision, reason, crop, disease) between two runs on the same images."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} decisions against {len(b)}")
    return sum(x == y for x, y in zip(a, b)) / len(a) if a else 1.0


def recorded_agreement(model_set: dict) -> tuple[float, int] | None:
    """(agreement, images) of bf16 against fp32 on held-out images, as the set's build measured it.

    None when the build did not run bf16 (a machine without it records fp32: nothing compared).
    """
    agree = model_set.get("dtype_agreement") or {}
    if agree.get("serving_dtype") != "bfloat16" or "agreement" not in agree:
        return None
    return float(agree["agreement"]), int(agree.get("images") or 0)
