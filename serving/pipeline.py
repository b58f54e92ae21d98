"""The model side of the service: load a model set, diagnose a batch of images.

    pipe = Pipeline.load(Path("/models"), load_manifest("/app/version"))
    pipe.warmup()
    pipe.diagnose([image], [None])  ->  [Diagnosis(decision="accept", crop="tomato", ...)]

One batched call serves many images. Images without a crop hint go through the router (base
backbone, no adapter); then the whole batch goes through the backbone once more with each row's
own LoRA adapter (serving.mixed_adapters). The fields of a Diagnosis always carry the model's
best guess; `decision` says whether to trust it. The backbone runs in bf16 where the hardware
has it and the set decides as in fp32 (serving.precision); pooling, heads and OOD in fp32.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from serving import dynamic_depth
from serving import ood as ood_mod
from serving import precision as precision_mod
from serving.backbones import EncoderView, load_backbone, pick_device
from serving.bundles import HashCheck, ModelLoadError, read_bundle, read_json
from serving.checkpoints import check_config_matches, read_config, weights_digest
from serving.decision import decide
from serving.manifest import Manifest
from serving.mixed_adapters import MixedAdapters
from serving.phases import Phases
from serving.preprocess import PATCH_SIZE, Preprocess
from serving.router import Router
from serving.train import OOD_FILE, StandardisedHead

__all__ = ["Diagnosis", "ModelLoadError", "Pipeline", "MODEL_SET_FILE", "RANDOM_INIT_NOTICE"]

MODEL_SET_FILE = "model_set.json"
GOLDEN_FILE = "golden/golden.json"
log = logging.getLogger("serving.pipeline")
RANDOM_INIT_NOTICE = ("demo model: the backbone is randomly initialized (not pretrained DINO weights) and the "
                      "adapters were trained on synthetic images; its diagnoses mean nothing for real plants")


@dataclass(frozen=True)
class Diagnosis:
    decision: str                    # "accept" | "review"
    reason: str | None               # None | "not_a_supported_crop" | "unfamiliar_for_crop" | "low_confidence"
    crop: str | None
    crop_confidence: float | None    # router probability; None when the request named the crop
    disease: str | None
    confidence: float | None         # disease probability from the crop's head
    ood_score: float | None          # adapter Mahalanobis distance / threshold (> 1 = unfamiliar)
    router_ood_score: float | None   # router's, None when the router was skipped
    blocks_used: int                 # encoder blocks run, max over the passes of this image
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Adapter:
    crop: str
    classes: list[str]
    head: StandardisedHead
    ood: ood_mod.OODModel
    meta: dict

    def predict(self, feats: torch.Tensor, blocks: list[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> class index, its probability, OOD score (n,), on the device of `feats`."""
        probs = self.head(feats).softmax(-1)
        conf, idx = probs.max(-1)
        return idx, conf, self.ood.scores(feats, blocks)

    def to(self, device: torch.device) -> "_Adapter":
        return _Adapter(self.crop, self.classes, self.head.to(device), self.ood.to(device), self.meta)


def _host(*tensors: torch.Tensor) -> list[list]:
    """Device tensors -> Python lists, in one transfer each (the only place results leave the device)."""
    return [t.detach().to("cpu").tolist() for t in tensors]


def _precision_info(precision: precision_mod.Precision, check: dict | None) -> dict:
    return {"dtype": precision.name, "requested": precision.requested, "source": precision.source,
            "reason": precision.reason, "agreement_target": precision_mod.AGREEMENT_TARGET, "check": check,
            "refused": None}


def read_model_set(model_dir: Path) -> dict:
    path = model_dir / MODEL_SET_FILE
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist (expected {path})")
    doc = read_json(path, missing=f": {model_dir} is not a model set")
    for key in ("version", "family", "preprocess", "files"):
        if key not in doc:
            raise ModelLoadError(f"{path} lacks {key!r}")
    return doc


def backbone_weights_digest(model_dir: Path, files: dict[str, str]) -> str | None:
    """The digest adapters record as `backbone_sha256` (single file or shard set), from the set's hashes."""
    try:
        return weights_digest(model_dir / "backbone", files, prefix="backbone/")
    except ModelLoadError:
        return None


class Pipeline:
    def __init__(self, *, manifest: Manifest, model_set: dict, model_dir: Path, model, view: EncoderView,
                 router: Router, adapters: dict[str, _Adapter], preprocess: Preprocess,
                 policy: dynamic_depth.DepthPolicy, device: torch.device, dtype: torch.dtype, load_seconds: float):
        self.manifest, self.model_set, self.model_dir = manifest, model_set, model_dir
        self.model, self.view, self.router, self.adapters = model, view, router, adapters
        self.preprocess, self.policy, self.device, self.dtype = preprocess, policy, device, dtype
        self.crops: dict[str, list[str]] = {c: list(a.classes) for c, a in adapters.items()}
        self.warmed = False
        self.phases = Phases()
        # One adapter pass per mixed-crop batch (serving.mixed_adapters); False: one pass per crop.
        self.mixed_adapters = True
        self._mixed: MixedAdapters | None = None
        self.confidence_threshold = manifest.adapter_spec.confidence_threshold
        dyn = model_set.get("dynamic_depth") or {}
        self.info: dict = {
            "version": model_set["version"], "family": model_set["family"],
            "model_id": model_set.get("model_id", manifest.backbone.model_id),
            "random_init": bool(model_set.get("random_init", False)),
            "synthetic": bool(model_set.get("synthetic", False)),
            "notice": RANDOM_INIT_NOTICE if model_set.get("random_init") else None,
            "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "num_blocks": view.num_layers, "hidden_size": view.hidden_size,
            "preprocess": preprocess.to_dict(),
            "dynamic_blocks": {"enabled": policy.enabled, "min_blocks": policy.min_blocks,
                               "threshold": policy.threshold if policy.enabled else None,
                               "calibrated_agreement": dyn.get("agreement"),
                               "calibrated_mean_blocks": dyn.get("mean_blocks")},
            "load_seconds": round(load_seconds, 3),
            "model_set_created": model_set.get("created"),
        }

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest, device: str | None = None, verify: bool = True,
             dtype: str | None = None, dtype_source: str = "caller", check_precision: bool = True,
             phases: Phases | None = None, hashing: HashCheck | None = None) -> "Pipeline":
        """Load and verify a model set (offline). Raises ModelLoadError naming the bad path.

        `dtype` ("float32", "bfloat16", "auto") overrides the manifest's, e.g. to compare with fp32;
        `dtype_source` names who asked for it in logs and `info["precision"]`. bf16 is only kept if
        it decides as fp32 does (serving.precision): otherwise the set is served in fp32;
        `check_precision=False` skips that check (tools that measure the agreement themselves).
        `phases` receives the seconds spent hashing, reading weights, building, checking precision.
        `hashing`: a check of this set's files already running (`HashCheck.start`, as the service
        starts it before importing torch); by default one starts here when `verify`.
        """
        t0 = time.perf_counter()
        phases = Phases() if phases is None else phases
        model_dir = Path(model_dir)
        doc = read_model_set(model_dir)
        family = manifest.backbone.family
        if doc["version"] != manifest.version:
            raise ModelLoadError(f"{model_dir / MODEL_SET_FILE} is for version {doc['version']}, not {manifest.version}")
        if doc["family"] != family:
            raise ModelLoadError(f"{model_dir / MODEL_SET_FILE}: backbone family {doc['family']} does not match "
                                 f"the manifest's {family}")
        for part in ["backbone", "router"] + [f"adapters/{c}" for c in manifest.crops]:
            if not (model_dir / part).is_dir():
                raise ModelLoadError(f"model set {model_dir}: directory {model_dir / part} is missing")
        # Hashing runs beside the loading (hashlib releases the GIL on large reads); the set is not
        # served until it has passed: a mismatch fails the load below. Everything parsed meanwhile
        # is safetensors or JSON, never pickle.
        if hashing is None and verify:
            hashing = HashCheck(model_dir, doc["files"], f"model set {model_dir}")
        try:
            pre = doc["preprocess"]
            preprocess = Preprocess(family, int(pre["image_size"]), int(pre["resize_size"]),
                                    tuple(pre.get("mean", manifest.backbone.mean)),
                                    tuple(pre.get("std", manifest.backbone.std)),
                                    crop=bool(pre.get("crop", True)), resample=pre.get("resample"))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"{model_dir / MODEL_SET_FILE}: bad preprocess section ({e})") from None
        if int(pre.get("patch_size", PATCH_SIZE[family])) != PATCH_SIZE[family]:
            raise ModelLoadError(f"{model_dir / MODEL_SET_FILE}: patch size {pre.get('patch_size')} is not {family}'s")

        model_id = doc.get("model_id", manifest.backbone.model_id)
        if model_id not in [manifest.backbone.model_id, *manifest.backbone.variants]:
            raise ModelLoadError(f"{model_dir / MODEL_SET_FILE}: model_id {model_id} is neither the manifest's "
                                 f"{manifest.backbone.model_id} nor one of its variants")
        if not doc.get("random_init"):  # a demo stand-in is smaller than the model it stands for
            check_config_matches(read_config(model_dir / "backbone"), family, model_id, f"model set {model_dir}")
        dev = pick_device(device)
        precision = precision_mod.choose(dev, dtype or manifest.backbone.dtype, dtype_source if dtype else "manifest")
        # Loaded in fp32 on the CPU with its adapters, then moved as a whole (peft loads into real
        # tensors); cast to bf16 only after the fp32 decisions on the golden images are known.
        dt = torch.float32
        try:
            with phases.phase("read_weights"):
                backbone = load_backbone(model_dir / "backbone", family, "cpu", dt)
            with phases.phase("build_model"):
                model, view, router, adapters, policy = cls._assemble(model_dir, manifest, doc, backbone, dev, dt)
        except ModelLoadError:
            if hashing is not None:
                hashing.result()  # a file that fails its hash explains a broken load best
            raise
        if hashing is not None:
            with phases.phase("hash_wait"):
                hashing.result()
            phases.add("hash", hashing.seconds)
        pipe = cls(manifest=manifest, model_set=doc, model_dir=model_dir, model=model, view=view, router=router,
                   adapters=adapters, preprocess=preprocess, policy=policy, device=dev, dtype=dt,
                   load_seconds=time.perf_counter() - t0)
        pipe.phases = phases
        if precision.dtype == torch.float32 or not check_precision:
            pipe.set_dtype(precision.dtype)
            pipe.info["precision"] = _precision_info(precision, None)
            return pipe
        with phases.phase("precision_check"):
            refusal, check = pipe._try_precision(precision.dtype)
        if refusal is None:
            pipe.info["precision"] = _precision_info(precision, check)
            pipe.info["load_seconds"] = round(time.perf_counter() - t0, 3)
            return pipe
        log.warning("serving %s in float32, not bfloat16: %s", manifest.version, refusal)
        if pipe.dtype == torch.float32:  # refused before any cast: the fp32 model built above stands
            pipe.info["precision"] = {**_precision_info(precision, check), "dtype": "float32", "refused": refusal}
            pipe.info["load_seconds"] = round(time.perf_counter() - t0, 3)
            return pipe
        del pipe, model  # cast to bf16 for the golden pass: its weights were rounded, read them again
        fp32 = cls.load(model_dir, manifest, device=device, verify=False, dtype="float32", dtype_source="refusal",
                        phases=phases)
        fp32.info["precision"] = {**_precision_info(precision, check), "dtype": "float32", "refused": refusal}
        fp32.info["load_seconds"] = round(time.perf_counter() - t0, 3)
        return fp32

    @staticmethod
    def _assemble(model_dir: Path, manifest: Manifest, doc: dict, backbone, dev: torch.device, dt: torch.dtype):
        """Router, adapters (peft on `backbone`), heads, OOD statistics and the depth policy, checked."""
        router = Router.load(model_dir / "router")
        if sorted(router.crops) != sorted(manifest.crops):
            raise ModelLoadError(f"router in {model_dir / 'router'} knows crops {router.crops}, "
                                 f"the manifest lists {list(manifest.crops)}")
        backbone_sha = backbone_weights_digest(model_dir, doc["files"])
        adapters: dict[str, _Adapter] = {}
        model = None
        for crop, classes in manifest.crops.items():
            adir = model_dir / "adapters" / crop
            meta = read_bundle(adir, kind="adapter")
            if list(meta.get("classes", [])) != list(classes):
                raise ModelLoadError(f"adapter {adir} has classes {meta.get('classes')}, the manifest lists {classes}")
            if backbone_sha and meta.get("backbone_sha256") != backbone_sha:
                raise ModelLoadError(f"adapter {adir} was trained on another backbone (backbone_sha256 differs)")
            try:
                if model is None:
                    from peft import PeftModel

                    model = PeftModel.from_pretrained(backbone, str(adir), adapter_name=crop, is_trainable=False)
                else:
                    model.load_adapter(str(adir), adapter_name=crop, is_trainable=False)
                head = StandardisedHead.load(adir)
                ood = ood_mod.OODModel.load(adir / OOD_FILE)
            except Exception as e:
                raise ModelLoadError(f"adapter {adir} cannot be loaded ({type(e).__name__}: {str(e)[:200]})") from None
            adapters[crop] = _Adapter(crop, list(classes), head, ood, meta)
        # Everything that touches features lives where the features come out: the backbone's device.
        model = model.to(device=dev, dtype=dt).eval()
        router = router.to(dev)
        adapters = {crop: a.to(dev) for crop, a in adapters.items()}
        view = EncoderView(model)
        dyn_cfg = manifest.dynamic_blocks
        threshold = float((doc.get("dynamic_depth") or {}).get("threshold", dyn_cfg.threshold))
        policy = dynamic_depth.DepthPolicy.from_fraction(dyn_cfg.enabled, dyn_cfg.min_blocks_fraction, threshold,
                                                         view.num_layers)
        if policy.enabled:
            exits = set(dynamic_depth.exit_depths(policy, view.num_layers))
            lacking = [name for name, ood in [("router", router.ood)] + [(c, a.ood) for c, a in adapters.items()]
                       if not exits <= set(ood.by_depth)]
            if lacking:
                raise ModelLoadError(f"model set {model_dir}: dynamic blocks are on, but the OOD statistics of "
                                     f"{', '.join(lacking)} lack blocks {sorted(exits)} (rebuild the set)")
        return model, view, router, adapters, policy

    def _try_precision(self, dtype: torch.dtype) -> tuple[str | None, dict | None]:
        """Cast the backbone to `dtype` if its decisions on the golden images match fp32's.

        Returns (why it was refused or None, the measurement): the held-out agreement the set's
        build recorded for bf16, or else the golden images run here in fp32 and in `dtype`.
        """
        target = precision_mod.AGREEMENT_TARGET
        recorded = precision_mod.recorded_agreement(self.model_set)
        if recorded is not None:  # measured at build time on the held-out split: no second run here
            agreement, count = recorded
            check = {"heldout_agreement": agreement, "heldout_images": count}
            if agreement < target:
                return (f"the model set records bf16/fp32 decision agreement {agreement:.4f} on {count} held-out "
                        f"images, below {target}"), check
            self.set_dtype(dtype)
            return None, check
        images, recorded = self.golden_images(with_decisions=True)
        if not images:
            return f"the model set has no golden images ({GOLDEN_FILE}) to check bf16 against fp32", None
        # Golden decisions recorded in fp32 are the reference as they stand: one pass (in bf16) is enough.
        fp32_recorded = (self.model_set.get("golden") or {}).get("dtype") == "float32"
        reference = recorded if fp32_recorded else self.decisions(images)
        self.set_dtype(dtype)
        got = self.decisions(images)
        self.warmed = True
        agreement = precision_mod.decisions_agreement(got, reference)
        check = {"golden_agreement": agreement, "golden_images": len(images)}
        if agreement < precision_mod.AGREEMENT_TARGET:
            return (f"bf16 and fp32 decisions agree on {agreement:.4f} of {len(images)} golden images, "
                    f"below {precision_mod.AGREEMENT_TARGET}"), check
        return None, check

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Hold the backbone and its adapters in `dtype` (pooling, heads and OOD stay fp32)."""
        self.model.to(dtype=dtype)
        self.dtype = dtype
        self.info["dtype"] = str(dtype).removeprefix("torch.")

    def golden_images(self, with_decisions: bool = False):
        """The set's golden images (held-out images with recorded decisions); [] when it has none.

        With `with_decisions`: (images, their recorded (decision, reason, crop, disease)).
        """
        path = self.model_dir / GOLDEN_FILE
        images: list[Image.Image] = []
        recorded: list[tuple] = []
        if path.is_file():
            try:
                for row in json.loads(path.read_text()):
                    with Image.open(path.parent / row["image"]) as im:
                        images.append(im.convert("RGB"))
                    recorded.append((row["decision"], row["reason"], row["crop"], row["disease"]))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ModelLoadError(f"{path} cannot be read ({type(e).__name__}: {e})") from None
        return (images, recorded) if with_decisions else images

    def decisions(self, images: list[Image.Image], batch_size: int = 32) -> list[tuple]:
        """(decision, reason, crop, disease) of each image, routed: what two precisions must agree on."""
        out: list[tuple] = []
        for b in range(0, len(images), batch_size):
            chunk = images[b:b + batch_size]
            out += [(d.decision, d.reason, d.crop, d.disease) for d in self.diagnose(chunk, [None] * len(chunk))]
        return out

    # ---------------------------------------------------------------- serving
    def warmup(self) -> None:
        """One pass through the router and an adapter; skipped when the precision check just ran both."""
        if self.warmed:
            return
        self.warmed = True
        blank = Image.new("RGB", (self.preprocess.image_size, self.preprocess.image_size), (128, 128, 128))
        self.diagnose([blank], [None])

    def adapter_info(self, crop: str) -> dict:
        if crop not in self.adapters:
            raise KeyError(crop)
        a = self.adapters[crop]
        lora = a.meta.get("lora", {})
        return {
            "crop": crop, "classes": a.classes, "rank": lora.get("rank"), "alpha": lora.get("alpha"),
            "dropout": lora.get("dropout"), "targets": lora.get("target_modules"),
            "thresholds": {"confidence": self.confidence_threshold, "ood": a.meta.get("ood_thresholds"),
                           "ood_acceptance_rate": a.meta.get("ood_acceptance_rate")},
            "sha256": a.meta.get("files", {}), "backbone_sha256": a.meta.get("backbone_sha256"),
            "metrics": a.meta.get("metrics", {}),
            "random_init": bool(a.meta.get("random_init", self.info["random_init"])),
            "synthetic": bool(a.meta.get("synthetic", self.info["synthetic"])),
        }

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return self.preprocess.batch(images).to(self.device)

    def diagnose(self, images: list[Image.Image], crop_hints: list[str | None],
                 policy: dynamic_depth.DepthPolicy | None = None) -> list[Diagnosis]:
        """Diagnose a batch. crop_hints[i] None: the router picks the crop; a crop name skips the router."""
        if len(images) != len(crop_hints):
            raise ValueError("images and crop_hints differ in length")
        for hint in crop_hints:
            if hint is not None and hint not in self.adapters:
                raise ValueError(f"unknown crop_hint {hint!r}: supported crops are {', '.join(self.adapters)}")
        if not images:
            return []
        policy = self.policy if policy is None else policy
        t0 = time.perf_counter()
        with torch.inference_mode():
            pixels = self._pixels(images)
            t_pre = time.perf_counter()
            n = len(images)
            crops: list[str | None] = list(crop_hints)
            crop_conf: list[float | None] = [None] * n
            router_score: list[float | None] = [None] * n
            blocks = [0] * n
            routed = [i for i, h in enumerate(crop_hints) if h is None]
            if routed:
                with self.model.disable_adapter():
                    feats, used = dynamic_depth.run(self.view, pixels[routed], policy)
                used = used.tolist()
                idx, conf, score = _host(*self.router.predict(feats, used))
                for j, i in enumerate(routed):
                    crops[i] = self.router.crops[int(idx[j])]
                    crop_conf[i], router_score[i] = float(conf[j]), float(score[j])
                    blocks[i] = int(used[j])
            t_router = time.perf_counter()
            disease: list[str | None] = [None] * n
            confidence: list[float | None] = [None] * n
            ood_score: list[float | None] = [None] * n
            groups = {crop: [i for i in range(n) if crops[i] == crop] for crop in dict.fromkeys(crops)}
            for crop, members, feats, used in self._adapter_passes(pixels, crops, groups, policy):
                adapter = self.adapters[crop]
                idx, conf, score = _host(*adapter.predict(feats, used))
                for j, i in enumerate(members):
                    disease[i] = adapter.classes[int(idx[j])]
                    confidence[i], ood_score[i] = float(conf[j]), float(score[j])
                    blocks[i] = max(blocks[i], int(used[j]))
            t_end = time.perf_counter()
        timings = {"preprocess": round((t_pre - t0) * 1e3, 3), "router": round((t_router - t_pre) * 1e3, 3),
                   "adapter": round((t_end - t_router) * 1e3, 3), "total": round((t_end - t0) * 1e3, 3)}
        out = []
        for i in range(n):
            decision, reason = self._decide(router_score[i], ood_score[i], confidence[i])
            out.append(Diagnosis(decision, reason, crops[i], crop_conf[i], disease[i], confidence[i], ood_score[i],
                                 router_score[i], blocks[i], dict(timings)))
        return out

    def _adapter_passes(self, pixels: torch.Tensor, crops: list, groups: dict[str, list[int]],
                        policy: dynamic_depth.DepthPolicy):
        """(crop, its rows, their features, blocks used) per crop group: one backbone pass for the whole
        batch when it holds several crops (`mixed_adapters`), else one pass per crop."""
        if self.mixed_adapters and len(groups) > 1:
            if self._mixed is None:
                self._mixed = MixedAdapters(self.model)
            with self._mixed.rows([str(c) for c in crops]) as mixed:
                feats, used = dynamic_depth.run(self.view, pixels, policy, on_drop=mixed.keep)
            for crop, members in groups.items():
                yield crop, members, feats[members], used[members].tolist()
            return
        for crop, members in groups.items():
            self.model.set_adapter(crop)
            feats, used = dynamic_depth.run(self.view, pixels[members], policy)
            yield crop, members, feats, used.tolist()

    def _decide(self, router_score: float | None, ood_score: float, confidence: float) -> tuple[str, str | None]:
        """The set's confidence threshold applied by the pure rule (serving.decision)."""
        return decide(router_score, ood_score, confidence, self.confidence_threshold)

    # ---------------------------------------------------------------- dynamic depth calibration
    def calibrate_depth(self, images: list[Image.Image], target_agreement: float | None = None,
                        batch_size: int = 64) -> dynamic_depth.Calibration:
        """Lowest exit threshold whose routed decisions agree with full depth on >= target of `images`.

        Traces every block once (router pass, then the full-depth crop's adapter pass) and replays
        exits for each candidate threshold. An image whose early-exit crop differs from full depth
        counts as a disagreement.
        """
        cfg = self.manifest.dynamic_blocks
        target = cfg.target_agreement if target_agreement is None else target_agreement
        min_blocks = dynamic_depth.DepthPolicy.from_fraction(True, cfg.min_blocks_fraction, 1.0,
                                                             self.view.num_layers).min_blocks
        num_layers = self.view.num_layers
        r_feats, r_sims, a_feats, a_sims = [], [], [], []
        with torch.inference_mode():
            for b in range(0, len(images), batch_size):
                px = self._pixels(images[b:b + batch_size])
                with self.model.disable_adapter():
                    f, s = dynamic_depth.trace(self.view, px)
                r_feats.append(f.cpu())
                r_sims.append(s.cpu())
            r_feats, r_sims = torch.cat(r_feats, 1), torch.cat(r_sims, 1)
            full_crop = torch.tensor(_host(self.router.predict(r_feats[-1].to(self.device))[0])[0])
            n = r_feats.shape[1]
            a_feats = torch.empty(num_layers, n, self.view.feature_dim)
            a_sims = torch.empty(num_layers, n)
            for ci, crop in enumerate(self.router.crops):
                members = (full_crop == ci).nonzero().flatten().tolist()
                if not members:
                    continue
                self.model.set_adapter(crop)
                for b in range(0, len(members), batch_size):
                    sel = members[b:b + batch_size]
                    f, s = dynamic_depth.trace(self.view, self._pixels([images[i] for i in sel]))
                    a_feats[:, sel], a_sims[:, sel] = f.cpu(), s.cpu()

        def decisions(r_blocks: torch.Tensor, a_blocks: torch.Tensor) -> list[tuple]:
            rows = torch.arange(n)
            rf, af = r_feats[r_blocks - 1, rows], a_feats[a_blocks - 1, rows]
            cidx, _, rscore = _host(*self.router.predict(rf.to(self.device), r_blocks.tolist()))
            out = []
            for i in range(n):
                crop = self.router.crops[int(cidx[i])]
                if int(cidx[i]) != int(full_crop[i]):
                    out.append(("crop-changed", crop))
                    continue
                didx, conf, oscore = _host(*self.adapters[crop].predict(af[i:i + 1].to(self.device),
                                                                        [int(a_blocks[i])]))
                decision = self._decide(float(rscore[i]), float(oscore[0]), float(conf[0]))
                out.append((*decision, crop, self.adapters[crop].classes[int(didx[0])]))
            return out

        full = decisions(torch.full((n,), num_layers), torch.full((n,), num_layers))

        def evaluate(threshold: float) -> tuple[float, float]:
            rb = dynamic_depth.exit_blocks(r_sims, min_blocks, threshold)
            ab = dynamic_depth.exit_blocks(a_sims, min_blocks, threshold)
            got = decisions(rb, ab)
            agree = sum(g == f for g, f in zip(got, full)) / n
            return agree, float(torch.maximum(rb, ab).float().mean())

        candidates = dynamic_depth.candidate_thresholds(torch.cat([r_sims, a_sims], 1), min_blocks,
                                                        extra=(cfg.threshold,))
        return dynamic_depth.calibrate_threshold(evaluate, candidates, target, num_layers, n)
