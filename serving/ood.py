"""Out-of-distribution check: class means + one shared, shrunk covariance (Mahalanobis).

Fit on the training split, thresholds on a HELD-OUT split. A full covariance estimated on a
few hundred samples overfits: held-out in-distribution images then look foreign. Two things
fix it (both mattered in a check here): Ledoit–Wolf shrinkage of the covariance towards a
scaled identity (after standardising each feature), and thresholds taken as the acceptance
-rate quantile of held-out distances rather than of training distances.

score(x) = min over classes c of  d_c(x) / threshold_c ; > 1 means unfamiliar.

Early exit (serving.dynamic_depth) hands over features of an earlier block, which sit
elsewhere than last-block features. For every block a sample may exit at, the model keeps
that depth's own standardisation, class means and held-out thresholds (`fit_depth`); the
shrunk precision of the last block is shared, as a metric. `scores(feats, blocks)` picks per
row the statistics of the block its feature came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Shrunk covariance of centred rows `x` (n, p) towards mu*I, and the shrinkage used.

    The analytic Ledoit–Wolf (2004) coefficient, as in scikit-learn's `ledoit_wolf_shrinkage`.
    """
    x = x.double()
    n, p = x.shape
    emp = x.T @ x / n
    mu = torch.trace(emp) / p
    x2 = x * x
    beta_ = (x2.T @ x2).sum() / n
    delta_ = (emp * emp).sum()
    beta = (beta_ - delta_) / (p * n)
    delta = (delta_ - 2 * mu * torch.trace(emp) + p * mu * mu) / p
    beta = torch.minimum(beta, delta)
    shrinkage = 0.0 if float(delta) == 0 else float(beta / delta)
    cov = (1 - shrinkage) * emp + shrinkage * mu * torch.eye(p, dtype=x.dtype)
    return cov, shrinkage


@dataclass
class OODModel:
    center: torch.Tensor      # (p,) feature standardisation
    scale: torch.Tensor       # (p,)
    means: torch.Tensor       # (k, p) class means, standardised space
    precision: torch.Tensor   # (p, p) inverse of the shared shrunk covariance
    thresholds: torch.Tensor  # (k,) Mahalanobis distance accepted per class
    shrinkage: float = 0.0
    # exit block -> DepthStats of features taken after that block (blocks before the last one)
    by_depth: dict[int, "DepthStats"] = field(default_factory=dict)

    @property
    def last(self) -> "DepthStats":
        return DepthStats(self.center, self.scale, self.means, self.thresholds)

    def distances(self, feats: torch.Tensor, stats: "DepthStats | None" = None) -> torch.Tensor:
        """(n, p) features -> (n, k) Mahalanobis distances to every class mean."""
        st = stats or self.last
        z = (feats.double() - st.center) / st.scale
        diff = z[:, None, :] - st.means[None, :, :]                        # (n, k, p)
        m = torch.einsum("nkp,pq,nkq->nk", diff, self.precision, diff)
        return m.clamp_min(0).sqrt().float()

    def scores(self, feats: torch.Tensor, blocks: list[int] | None = None) -> torch.Tensor:
        """(n,) min_c d_c / threshold_c: above 1 = unfamiliar.

        `blocks[i]`: the block row i's feature was taken after; a block with its own statistics
        uses them, any other (the last block, or no early exit) the last block's.
        """
        depths = sorted({b for b in blocks if b in self.by_depth}) if blocks is not None else []
        if not depths:
            return self._scores(feats, self.last)
        out = torch.empty(len(feats), dtype=torch.float32, device=feats.device)
        rest = [i for i, b in enumerate(blocks) if b not in self.by_depth]
        if rest:
            out[rest] = self._scores(feats[rest], self.last)
        for d in depths:
            rows = [i for i, b in enumerate(blocks) if b == d]
            out[rows] = self._scores(feats[rows], self.by_depth[d])
        return out

    def _scores(self, feats: torch.Tensor, stats: "DepthStats") -> torch.Tensor:
        return (self.distances(feats, stats) / stats.thresholds[None, :]).min(dim=1).values

    def to(self, device: torch.device | str) -> "OODModel":
        """The same model with every tensor on `device` (dtypes kept: distances stay float64)."""
        return OODModel(self.center.to(device), self.scale.to(device), self.means.to(device),
                        self.precision.to(device), self.thresholds.to(device), self.shrinkage,
                        {d: s.to(device) for d, s in self.by_depth.items()})

    def save(self, path: str | Path) -> None:
        tensors = {
            "center": self.center.contiguous(), "scale": self.scale.contiguous(),
            "means": self.means.contiguous(), "precision": self.precision.contiguous(),
            "thresholds": self.thresholds.contiguous(),
            "shrinkage": torch.tensor([self.shrinkage], dtype=torch.float64),
        }
        for d, st in self.by_depth.items():
            tensors |= {f"depth{d}.{k}": v.contiguous() for k, v in st.tensors().items()}
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "OODModel":
        t = load_file(str(path))
        by_depth: dict[int, DepthStats] = {}
        for d in sorted({int(k.split(".")[0][5:]) for k in t if k.startswith("depth")}):
            by_depth[d] = DepthStats(t[f"depth{d}.center"], t[f"depth{d}.scale"], t[f"depth{d}.means"],
                                     t[f"depth{d}.thresholds"].float())
        return cls(center=t["center"], scale=t["scale"], means=t["means"], precision=t["precision"],
                   thresholds=t["thresholds"].float(), shrinkage=float(t["shrinkage"][0]), by_depth=by_depth)


@dataclass
class DepthStats:
    """Standardisation, class means and thresholds of the features after one block."""

    center: torch.Tensor
    scale: torch.Tensor
    means: torch.Tensor
    thresholds: torch.Tensor

    def to(self, device: torch.device | str) -> "DepthStats":
        return DepthStats(self.center.to(device), self.scale.to(device), self.means.to(device),
                          self.thresholds.to(device))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"center": self.center, "scale": self.scale, "means": self.means, "thresholds": self.thresholds}


def fit(train_feats: torch.Tensor, train_labels: torch.Tensor, num_classes: int) -> OODModel:
    """Class means and the shared Ledoit–Wolf covariance from the training split (thresholds unset)."""
    x = train_feats.double()
    center = x.mean(0)
    scale = x.std(0).clamp_min(1e-6)
    z = (x - center) / scale
    means = torch.stack([z[train_labels == c].mean(0) for c in range(num_classes)])
    residuals = z - means[train_labels]
    cov, shrinkage = ledoit_wolf(residuals)
    precision = torch.linalg.inv(cov)
    return OODModel(center, scale, means, precision, torch.ones(num_classes), shrinkage)


def calibrate(model: OODModel, heldout_feats: torch.Tensor, heldout_labels: torch.Tensor,
              acceptance_rate: float) -> OODModel:
    """Per-class threshold = the acceptance-rate quantile of held-out distances to the own class mean.

    A class without held-out samples takes the quantile over all held-out samples.
    """
    d = model.distances(heldout_feats).double()
    own = d[torch.arange(len(d)), heldout_labels]
    overall = torch.quantile(own, acceptance_rate)
    thr = []
    for c in range(model.means.shape[0]):
        mine = own[heldout_labels == c]
        thr.append(torch.quantile(mine, acceptance_rate) if len(mine) else overall)
    model.thresholds = torch.stack(thr).float().clamp_min(1e-6)
    return model


def fit_depth(model: OODModel, train_feats: torch.Tensor, train_labels: torch.Tensor, heldout_feats: torch.Tensor,
              heldout_labels: torch.Tensor, acceptance_rate: float) -> DepthStats:
    """Statistics for features of an earlier block: own centre/scale/means, held-out thresholds.

    The precision of `model` (last block) is kept as the metric; the thresholds are the
    acceptance-rate quantiles of held-out distances at this depth, so the held-out acceptance
    is the configured rate at every exit depth.
    """
    x = train_feats.double()
    center, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - center) / scale
    k = model.means.shape[0]
    means = torch.stack([z[train_labels == c].mean(0) if bool((train_labels == c).any()) else model.means[c]
                         for c in range(k)])
    stats = DepthStats(center, scale, means, torch.ones(k))
    d = model.distances(heldout_feats, stats).double()
    own = d[torch.arange(len(d)), heldout_labels]
    overall = torch.quantile(own, acceptance_rate)
    thr = [torch.quantile(own[heldout_labels == c], acceptance_rate) if bool((heldout_labels == c).any()) else overall
           for c in range(k)]
    stats.thresholds = torch.stack(thr).float().clamp_min(1e-6)
    return stats


def fit_calibrated(train_feats: torch.Tensor | dict[int, torch.Tensor], train_labels: torch.Tensor,
                   held_feats: torch.Tensor | dict[int, torch.Tensor], held_labels: torch.Tensor, num_classes: int,
                   acceptance_rate: float, num_layers: int) -> OODModel:
    """OOD statistics of the last block, plus per-depth statistics when features come per depth."""
    last_train = train_feats[num_layers] if isinstance(train_feats, dict) else train_feats
    last_held = held_feats[num_layers] if isinstance(held_feats, dict) else held_feats
    ood = fit(last_train, train_labels, num_classes)
    ood = calibrate(ood, last_held, held_labels, acceptance_rate)
    if isinstance(train_feats, dict):
        for d in sorted(train_feats):
            if d != num_layers:
                ood.by_depth[d] = fit_depth(ood, train_feats[d], train_labels, held_feats[d], held_labels,
                                            acceptance_rate)
    return ood
