"""Crop router: a linear probe on frozen backbone features plus its own OOD check.

The probe picks the crop; the OOD statistics (one mean per crop/disease pair, shared shrunk
covariance) say whether the image looks like any supported crop at all. Runs on the base
backbone, without any LoRA adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from serving import ood as ood_mod
from serving.bundles import ModelLoadError, read_bundle, staged_directory, write_bundle

PROBE_FILE, OOD_FILE = "probe.safetensors", "ood.safetensors"


@dataclass
class LinearProbe:
    center: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        z = (feats.float() - self.center) / self.scale
        return z @ self.weight.T + self.bias

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).contiguous() for k in ("center", "scale", "weight", "bias")}

    def to(self, device: torch.device | str) -> "LinearProbe":
        return LinearProbe(*(getattr(self, k).to(device) for k in ("center", "scale", "weight", "bias")))


def fit_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-3,
              steps: int = 200) -> LinearProbe:
    """Multinomial logistic regression (L-BFGS, L2) on standardised features."""
    feats = feats.float()
    center, scale = feats.mean(0), feats.std(0).clamp_min(1e-6)
    z = (feats - center) / scale
    lin = torch.nn.Linear(z.shape[1], num_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(z), labels) + weight_decay * lin.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(center, scale, lin.weight.detach().clone(), lin.bias.detach().clone())


@dataclass
class Router:
    crops: list[str]
    probe: LinearProbe
    ood: ood_mod.OODModel
    meta: dict

    def predict(self, feats: torch.Tensor, blocks: list[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> crop index (n,), its probability (n,), OOD score (n,; > 1 = not a supported crop).

        All on the device of `feats`; `blocks`: the block each row's feature came from (early exit).
        """
        probs = self.probe.logits(feats).softmax(-1)
        conf, idx = probs.max(-1)
        return idx, conf, self.ood.scores(feats, blocks)

    def to(self, device: torch.device | str) -> "Router":
        """The router with probe and OOD statistics on `device`, where the features will be."""
        return Router(self.crops, self.probe.to(device), self.ood.to(device), self.meta)

    @classmethod
    def load(cls, directory: str | Path) -> "Router":
        directory = Path(directory)
        meta = read_bundle(directory, kind="router")
        try:
            probe = LinearProbe(**{k: v.float() for k, v in load_file(str(directory / PROBE_FILE)).items()})
            ood = ood_mod.OODModel.load(directory / OOD_FILE)
        except Exception as e:
            raise ModelLoadError(f"router bundle {directory} cannot be loaded ({type(e).__name__}: {e})") from None
        return cls(list(meta["crops"]), probe, ood, meta)


def train_router(train_feats: torch.Tensor, train_crop: torch.Tensor, train_fine: torch.Tensor,
                 heldout_feats: torch.Tensor, heldout_crop: torch.Tensor, heldout_fine: torch.Tensor,
                 crops: list[str], fine_names: list[str], acceptance_rate: float, out_dir: str | Path,
                 meta: dict) -> dict:
    """Fit the probe and OOD statistics on train features, thresholds on held-out; write the bundle.

    Features are (n, F) of the last block, or {block: (n, F)} including the last block when
    early exit may stop at the other blocks (OOD statistics are then fitted for each).
    """
    feats_by_depth = isinstance(train_feats, dict)
    num_layers = max(train_feats) if feats_by_depth else 0
    ood = ood_mod.fit_calibrated(train_feats, train_fine, heldout_feats, heldout_fine, len(fine_names),
                                 acceptance_rate, num_layers)
    if feats_by_depth:  # the probe reads the last block; per-depth features only serve the OOD check
        train_feats, heldout_feats = train_feats[num_layers], heldout_feats[num_layers]
    probe = fit_probe(train_feats, train_crop, len(crops))
    with torch.no_grad():
        acc = float((probe.logits(heldout_feats).argmax(-1) == heldout_crop).float().mean())
        accepted = float((ood.scores(heldout_feats) <= 1).float().mean())
    metrics = {"heldout_crop_accuracy": acc, "heldout_accepted": accepted,
               "train_size": len(train_feats), "heldout_size": len(heldout_feats)}
    with staged_directory(out_dir) as tmp:
        save_file(probe.to_tensors(), str(tmp / PROBE_FILE))
        ood.save(tmp / OOD_FILE)
        write_bundle(tmp, {**meta, "kind": "router", "crops": crops, "ood_classes": fine_names,
                           "ood_thresholds": [round(float(t), 6) for t in ood.thresholds],
                           "ood_acceptance_rate": acceptance_rate, "ood_shrinkage": ood.shrinkage,
                           "ood_exit_depths": sorted(ood.by_depth),
                           "feature": "cls+mean_patch", "metrics": metrics})
    return metrics
