"""The GPU room check: can the GPU hold the candidate's model next to the live one?

Blue and green are loaded at once during a compose switch, so a GPU target needs room for two
models; the check reads nvidia-smi and refuses before anything starts.
"""

from __future__ import annotations

import subprocess

from orchestrator.errors import GpuRoomError  # noqa: F401  (raised here; the tree is errors.py)



def gpu_memory() -> tuple[int, int] | None:
    """(free MiB, total MiB) of the fullest GPU per nvidia-smi, or None where there is none."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return parse_gpu_memory(r.stdout)


def parse_gpu_memory(text: str) -> tuple[int, int] | None:
    rows = []
    for line in text.strip().splitlines():
        try:
            free, total = (int(x.strip()) for x in line.split(","))
        except ValueError:
            continue
        rows.append((free, total))
    return min(rows) if rows else None


def gpu_room_verdict(free_mib: int, total_mib: int) -> str | None:
    """A second model needs about what the live one holds (total - free) plus headroom."""
    # Measured by `make gpu-check` on an H100 (docs/benchmarks.md, "On a GPU"): one version serving
    # batch 32 reserves 540-598 MiB at ViT-B size (1,104 at ViT-L) plus ~500 MiB of CUDA context, so
    # what the live process holds, x1.1 + 512 MiB, covers a candidate of the same size.
    used = total_mib - free_mib
    need = int(used * 1.1) + 512
    if free_mib < need:
        return (f"the GPU has {free_mib} MiB free of {total_mib} MiB; the candidate needs about {need} MiB next to "
                f"the live model (blue and green are loaded at once): free GPU memory or use a larger GPU")
    return None


def gpu_visible() -> bool:
    return gpu_memory() is not None


def room_verdict() -> str | None:
    """Why a second model does not fit on the GPU now, or None when it does."""
    mem = gpu_memory()
    if mem is None:
        raise GpuRoomError("gpu: on, but nvidia-smi cannot read the GPU's memory")
    return gpu_room_verdict(*mem)
