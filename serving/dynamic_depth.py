"""Dynamic block count: per-sample early exit once the feature the heads read has converged.

The blocks are run one at a time (`EncoderView`). After `min_blocks`, a sample leaves the batch
as soon as the cosine similarity between its pooled feature ([norm(CLS), mean of normed
patches], what the heads and OOD checks read) before and after a block reaches the threshold;
that pooled feature is its output, and the OOD checks score it with the statistics of that
block (serving.ood `by_depth`).
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


def run(view: EncoderView, pixel_values: torch.Tensor, policy: DepthPolicy = FULL_DEPTH,
        on_drop: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (n, 2*hidden) float32 and blocks used per sample (n,) long (on the CPU).

    `on_drop(keep)` hears of every early exit: `keep` is the mask of the rows that stay.
    """
    hidden, kwargs = view.embed(pixel_values)
    n, num_layers = hidden.shape[0], view.num_layers
    feats = torch.empty(n, view.feature_dim, dtype=torch.float32, device=hidden.device)
    blocks = torch.full((n,), num_layers, dtype=torch.long)
    active = torch.arange(n, device=hidden.device)
    check = policy.enabled and policy.threshold <= 1.0
    first = max(policy.min_blocks, 1)
    prev = view.pool(hidden) if check and first == 1 else None
    for depth, layer in enumerate(view.layers, start=1):
        hidden = layer(hidden, **kwargs)
        if check and first - 1 <= depth < num_layers:
            pooled = view.pool(hidden)
            if prev is not None:
                done = _converged(pooled, prev, policy.threshold)
                if bool(done.any()):
                    feats[active[done]] = pooled[done]
                    blocks[active[done].cpu()] = depth
                    keep = ~done
                    hidden, active, pooled = hidden[keep], active[keep], pooled[keep]
                    if on_drop is not None:
                        on_drop(keep)
                    if hidden.shape[0] == 0:
                        return feats, blocks
            prev = pooled
    feats[active] = view.pool(hidden)
    return feats, blocks


def _converged(pooled: torch.Tensor, prev: torch.Tensor, threshold: float) -> torch.Tensor:
    # Convergence of what the heads and OOD read ([norm(CLS), mean of normed patches]), not the raw CLS.
    return torch.nn.functional.cosine_similarity(pooled, prev, dim=-1) >= threshold


def trace(view: EncoderView, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-depth pass keeping, per block, the pooled feature (L, n, F) and its cosine similarity
    to the previous block's pooled feature (L, n) -- the quantity `run` compares with the threshold."""
    hidden, kwargs = view.embed(pixel_values)
    feats, sims = [], []
    prev = view.pool(hidden)
    for layer in view.layers:
        hidden = layer(hidden, **kwargs)
        pooled = view.pool(hidden)
        sims.append(torch.nn.functional.cosine_similarity(pooled, prev, dim=-1))
        feats.append(pooled)
        prev = pooled
    return torch.stack(feats), torch.stack(sims)


def pooled_at(view: EncoderView, pixel_values: torch.Tensor, depths: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Full-depth pass keeping the pooled feature after each block in `depths` only."""
    hidden, kwargs = view.embed(pixel_values)
    out = {}
    for depth, layer in enumerate(view.layers, start=1):
        hidden = layer(hidden, **kwargs)
        if depth in depths:
            out[depth] = view.pool(hidden)
    return out


def exit_depths(policy: DepthPolicy, num_layers: int) -> tuple[int, ...]:
    """The blocks `run` may stop after under `policy` (empty when early exit is off)."""
    if not policy.enabled:
        return ()
    return tuple(range(max(policy.min_blocks, 1), num_layers))


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
