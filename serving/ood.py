"""Out-of-distribution check: class means + one shared, shrunk covariance (Mahalanobis).

Fit on the training split, thresholds on a HELD-OUT split. A full covariance estimated on a
few hundred samples overfits: held-out in-distribution images then look foreign. Two things
fix it (both mattered in a check here): Ledoit–Wolf shrinkage of the covariance towards a
scaled identity (after standardising each feature), and thresholds taken as the acceptance
-rate quantile of held-out distances rather than of training distances.

score(x) = min over classes c of  d_c(x) / threshold_c ; > 1 means unfamiliar.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    def distances(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, p) features -> (n, k) Mahalanobis distances to every class mean."""
        z = (feats.double() - self.center) / self.scale
        diff = z[:, None, :] - self.means[None, :, :]                     # (n, k, p)
        m = torch.einsum("nkp,pq,nkq->nk", diff, self.precision, diff)
        return m.clamp_min(0).sqrt().float()

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """(n,) min_c d_c / threshold_c: above 1 = unfamiliar."""
        return (self.distances(feats) / self.thresholds[None, :]).min(dim=1).values

    def save(self, path: str | Path) -> None:
        save_file({
            "center": self.center.contiguous(), "scale": self.scale.contiguous(),
            "means": self.means.contiguous(), "precision": self.precision.contiguous(),
            "thresholds": self.thresholds.contiguous(),
            "shrinkage": torch.tensor([self.shrinkage], dtype=torch.float64),
        }, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "OODModel":
        t = load_file(str(path))
        return cls(center=t["center"], scale=t["scale"], means=t["means"], precision=t["precision"],
                   thresholds=t["thresholds"].float(), shrinkage=float(t["shrinkage"][0]))


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
