"""Dynamic block count: per-sample early exit once the CLS feature has converged.

The blocks are run one at a time (`EncoderView`). After `min_blocks`, a sample leaves the batch
as soon as the cosine similarity between its CLS token before and after a block reaches the
threshold; its pooled feature is taken from the state at that block (through the final norm).
The rest of the batch continues with fewer rows, which is where the time is saved.

The threshold is calibrated: among candidate thresholds, the lowest one whose decisions agree
with full depth on at least `target_agreement` of a calibration set (see `calibrate_threshold`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from serving.backbones import EncoderView

NEVER = 1.01  # a cosine similarity never reaches this: early exit off


@dataclass(frozen=True)
class DepthPolicy:
    enabled: bool
    min_blocks: int
    threshold: float

    @classmethod
    def from_fraction(cls, enabled: bool, fraction: float, threshold: float, num_layers: int) -> "DepthPolicy":
        return cls(enabled, max(1, min(num_layers, math.ceil(fraction * num_layers))), threshold)


FULL_DEPTH = DepthPolicy(False, 0, NEVER)


def run(view: EncoderView, pixel_values: torch.Tensor, policy: DepthPolicy = FULL_DEPTH
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (n, 2*hidden) float32 and blocks used per sample (n,) long."""
    hidden, kwargs = view.embed(pixel_values)
    n, num_layers = hidden.shape[0], view.num_layers
    feats = torch.empty(n, view.feature_dim, dtype=torch.float32, device=hidden.device)
    blocks = torch.full((n,), num_layers, dtype=torch.long)
    active = torch.arange(n, device=hidden.device)
    check = policy.enabled and policy.threshold <= 1.0
    prev_cls = hidden[:, 0]
    for depth, layer in enumerate(view.layers, start=1):
        hidden = layer(hidden, **kwargs)
        if check and policy.min_blocks <= depth < num_layers:
            sim = torch.nn.functional.cosine_similarity(hidden[:, 0].float(), prev_cls.float(), dim=-1)
            done = sim >= policy.threshold
            if bool(done.any()):
                feats[active[done]] = view.pool(hidden[done])
                blocks[active[done].cpu()] = depth
                keep = ~done
                hidden, active = hidden[keep], active[keep]
                if hidden.shape[0] == 0:
                    return feats, blocks
        prev_cls = hidden[:, 0]
    feats[active] = view.pool(hidden)
    return feats, blocks


def trace(view: EncoderView, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-depth pass keeping, per block, the pooled feature (L, n, F) and CLS similarity (L, n)."""
    hidden, kwargs = view.embed(pixel_values)
    feats, sims = [], []
    prev_cls = hidden[:, 0]
    for layer in view.layers:
        hidden = layer(hidden, **kwargs)
        sims.append(torch.nn.functional.cosine_similarity(hidden[:, 0].float(), prev_cls.float(), dim=-1))
        feats.append(view.pool(hidden))
        prev_cls = hidden[:, 0]
    return torch.stack(feats), torch.stack(sims)


def exit_blocks(sims: torch.Tensor, min_blocks: int, threshold: float) -> torch.Tensor:
    """Blocks `run` would use per sample (n,), given the traced similarities (L, n)."""
    num_layers, n = sims.shape
    out = torch.full((n,), num_layers, dtype=torch.long)
    for depth in range(num_layers - 1, max(min_blocks, 1) - 1, -1):  # last match wins = earliest
        out[sims[depth - 1] >= threshold] = depth
    return out


def candidate_thresholds(sims: torch.Tensor, min_blocks: int, extra: tuple[float, ...] = ()) -> list[float]:
    """The similarities actually observed where an exit could happen, plus `extra`, ascending."""
    window = sims[max(min_blocks, 1) - 1: sims.shape[0] - 1].flatten()
    values = set(round(float(v), 6) for v in window.tolist()) | set(extra)
    return sorted(v for v in values if v <= 1.0)


@dataclass(frozen=True)
class Calibration:
    threshold: float
    agreement: float
    mean_blocks: float
    full_blocks: int
    size: int

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "agreement": self.agreement, "mean_blocks": self.mean_blocks,
                "full_blocks": self.full_blocks, "calibration_size": self.size}


def calibrate_threshold(evaluate: Callable[[float], tuple[float, float]], candidates: list[float],
                        target_agreement: float, full_blocks: int, size: int) -> Calibration:
    """Lowest candidate threshold whose agreement with full depth reaches the target.

    `evaluate(threshold) -> (agreement, mean_blocks)`. A lower threshold exits earlier and can
    only change more decisions, so the candidates are bisected; if none reaches the target,
    early exit is turned off (threshold NEVER, full depth, agreement 1).
    """
    lo, hi, best = 0, len(candidates) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        agreement, mean_blocks = evaluate(candidates[mid])
        if agreement >= target_agreement:
            best, hi = (candidates[mid], agreement, mean_blocks), mid - 1
        else:
            lo = mid + 1
    if best is None:
        return Calibration(NEVER, 1.0, float(full_blocks), full_blocks, size)
    return Calibration(best[0], best[1], best[2], full_blocks, size)
