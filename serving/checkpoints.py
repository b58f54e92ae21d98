"""Hub-format backbone checkpoints: what a downloaded DINO directory holds and how it is checked.

A checkpoint directory is what `huggingface-cli download facebook/dinov3-vitl16-pretrain-lvd1689m`
leaves: `config.json`, the weights as one `model.safetensors` or as shards listed in
`model.safetensors.index.json`, and usually `preprocessor_config.json`. This module

- lists and hashes the weight files (`weight_files`, `weights_digest`: one digest for a single
  file or for a sharded set, so adapters can name the backbone they were trained on);
- checks a config against a model id (`check_config_matches`: family and width);
- reads the checkpoint's own preprocessing (`preprocess_from_checkpoint`);
- writes random-weight checkpoints of the published shapes (`write_random_checkpoint`), for tests,
  the demo and the GPU check: no machine of this project can download the real weights.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from serving.bundles import ModelLoadError, sha256_file
from serving.preprocess import PATCH_SIZE, Preprocess

SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
CONFIG_FILE, PREPROCESSOR_FILE = "config.json", "preprocessor_config.json"
MODEL_TYPE = {"dinov2": "dinov2", "dinov3": "dinov3_vit"}

# Width of each published size, keyed by the size word of the model id.
_DINOV2_WIDTH = {"small": 384, "base": 768, "large": 1024, "giant": 1536}
_DINOV3_WIDTH = {"s": 384, "splus": 384, "b": 768, "l": 1024, "hplus": 1280, "7b": 4096}
_DINOV2_ID = re.compile(r"dinov2(?:-with-registers)?-(small|base|large|giant)\b")
_DINOV3_ID = re.compile(r"dinov3-vit(s|splus|b|l|hplus|7b)16\b")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SAT_MEAN, SAT_STD = (0.430, 0.411, 0.296), (0.213, 0.156, 0.143)

# The published configs (config.json of each checkpoint, fields that decide shapes and behaviour).
_V3_COMMON = {"model_type": "dinov3_vit", "patch_size": 16, "image_size": 224, "num_register_tokens": 4,
              "rope_theta": 100.0, "pos_embed_rescale": 2.0, "layerscale_value": 1.0, "layer_norm_eps": 1e-5,
              "query_bias": True, "key_bias": False, "value_bias": True, "proj_bias": True, "mlp_bias": True,
              "use_gated_mlp": False, "hidden_act": "gelu", "architectures": ["DINOv3ViTModel"]}
_V2_COMMON = {"model_type": "dinov2", "patch_size": 14, "image_size": 518, "mlp_ratio": 4, "layerscale_value": 1.0,
              "layer_norm_eps": 1e-6, "qkv_bias": True, "hidden_act": "gelu", "architectures": ["Dinov2Model"]}
OFFICIAL_CONFIGS = {
    "facebook/dinov3-vits16-pretrain-lvd1689m": {**_V3_COMMON, "hidden_size": 384, "intermediate_size": 1536,
                                                 "num_hidden_layers": 12, "num_attention_heads": 6},
    "facebook/dinov3-vitb16-pretrain-lvd1689m": {**_V3_COMMON, "hidden_size": 768, "intermediate_size": 3072,
                                                 "num_hidden_layers": 12, "num_attention_heads": 12},
    "facebook/dinov3-vitl16-pretrain-lvd1689m": {**_V3_COMMON, "hidden_size": 1024, "intermediate_size": 4096,
                                                 "num_hidden_layers": 24, "num_attention_heads": 16},
    "facebook/dinov3-vitl16-pretrain-sat493m": {**_V3_COMMON, "hidden_size": 1024, "intermediate_size": 4096,
                                                "num_hidden_layers": 24, "num_attention_heads": 16},
    "facebook/dinov2-small": {**_V2_COMMON, "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "facebook/dinov2-base": {**_V2_COMMON, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "facebook/dinov2-large": {**_V2_COMMON, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
}


def official_preprocessor(model_id: str) -> dict:
    """The published preprocessor_config.json of a checkpoint (DINOv3: whole-image square resize)."""
    sat = "sat493m" in model_id
    mean, std = (SAT_MEAN, SAT_STD) if sat else (IMAGENET_MEAN, IMAGENET_STD)
    common = {"do_normalize": True, "do_rescale": True, "do_resize": True, "rescale_factor": 1 / 255,
              "image_mean": list(mean), "image_std": list(std)}
    if "dinov3" in model_id:
        return {**common, "image_processor_type": "DINOv3ViTImageProcessorFast", "resample": 2,
                "size": {"height": 224, "width": 224}}
    return {**common, "image_processor_type": "BitImageProcessor", "resample": 3, "do_center_crop": True,
            "size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_convert_rgb": True}


def family_of_model_id(model_id: str) -> str | None:
    low = model_id.lower()
    if _DINOV3_ID.search(low):
        return "dinov3"
    if _DINOV2_ID.search(low):
        return "dinov2"
    return None


def width_of_model_id(model_id: str) -> int | None:
    """Hidden size of the published checkpoint a model id names (None: a size this code does not know)."""
    low = model_id.lower()
    if m := _DINOV3_ID.search(low):
        return _DINOV3_WIDTH[m.group(1)]
    if m := _DINOV2_ID.search(low):
        return _DINOV2_WIDTH[m.group(1)]
    return None


def read_config(directory: Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing: --backbone must be a Hugging Face checkpoint directory") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"{path} cannot be read ({e})") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return doc


def check_config_matches(config: dict, family: str, model_id: str, where: str) -> None:
    """Raise ModelLoadError when the checkpoint's config is not the family and width of `model_id`."""
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE[family]:
        raise ModelLoadError(f"{where}: config.json says model_type {model_type!r}, but {model_id} is a {family} "
                             f"model ({MODEL_TYPE[family]!r})")
    named = family_of_model_id(model_id)
    if named is not None and named != family:
        raise ModelLoadError(f"{where}: model id {model_id} names a {named} checkpoint, the manifest's family is {family}")
    width = width_of_model_id(model_id)
    if width is not None and config.get("hidden_size") != width:
        raise ModelLoadError(f"{where}: hidden_size {config.get('hidden_size')} is not the {width} of {model_id} "
                             f"(a checkpoint of another size?)")
    if config.get("patch_size") != PATCH_SIZE[family]:
        raise ModelLoadError(f"{where}: patch_size {config.get('patch_size')} is not {family}'s {PATCH_SIZE[family]}")


def weight_files(directory: Path) -> list[str]:
    """The weight files of a checkpoint, relative names: one file, or the shards of the index."""
    directory = Path(directory)
    if (directory / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    index = directory / INDEX_FILE
    if not index.is_file():
        raise ModelLoadError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise ModelLoadError(f"{index} cannot be read as a shard index ({type(e).__name__}: {e})") from None
    missing = [s for s in shards if not (directory / s).is_file()]
    if not shards or missing:
        raise ModelLoadError(f"{index}: shard files missing: {', '.join(missing) or '(none listed)'}")
    return [INDEX_FILE] + shards


def weights_digest(directory: Path, hashes: dict[str, str] | None = None, prefix: str = "") -> str:
    """One sha256 naming the weights: of the single file, or over (name, sha256) of index + shards.

    `hashes` (relative path -> sha256, e.g. a model set's `files`) avoids re-reading large files.
    """
    names = weight_files(directory)

    def digest(name: str) -> str:
        if hashes is not None and f"{prefix}{name}" in hashes:
            return hashes[f"{prefix}{name}"]
        return sha256_file(Path(directory) / name)

    if names == [SINGLE_FILE]:
        return digest(SINGLE_FILE)
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\0{digest(name)}\n".encode())
    return h.hexdigest()


_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def preprocess_from_checkpoint(directory: Path, family: str, image_size: int, resize_size: int,
                               mean: tuple, std: tuple) -> tuple[Preprocess, str]:
    """The checkpoint's own preprocessing if it ships preprocessor_config.json, else the given one.

    Returns (Preprocess, source): source names where the settings came from.
    """
    path = Path(directory) / PREPROCESSOR_FILE
    if not path.is_file():
        return Preprocess(family, image_size, resize_size, tuple(mean), tuple(std)), "manifest"
    try:
        cfg = json.loads(path.read_text())
        size = cfg.get("size") or {}
        resample = _RESAMPLE.get(int(cfg.get("resample", 2 if family == "dinov3" else 3)))
        if resample is None:
            raise ValueError(f"resample {cfg.get('resample')} (only 2 = bilinear and 3 = bicubic are supported)")
        mean = tuple(float(v) for v in cfg.get("image_mean", mean))
        std = tuple(float(v) for v in cfg.get("image_std", std))
        if cfg.get("do_center_crop") and "shortest_edge" in size:
            crop = cfg.get("crop_size") or {}
            side = int(crop.get("height", image_size))
            if int(crop.get("width", side)) != side:
                raise ValueError(f"crop_size {crop} is not square")
            pre = Preprocess(family, side, int(size["shortest_edge"]), mean, std, crop=True, resample=resample)
        elif "height" in size and not cfg.get("do_center_crop"):
            side = int(size["height"])
            if int(size.get("width", side)) != side:
                raise ValueError(f"size {size} is not square")
            pre = Preprocess(family, side, side, mean, std, crop=False, resample=resample)
        else:
            raise ValueError(f"size {size} with do_center_crop={cfg.get('do_center_crop')} is not a layout this "
                             f"service knows (shortest_edge + centre crop, or a square height/width resize)")
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"{path} cannot be used ({e})") from None
    return pre, PREPROCESSOR_FILE


def write_random_checkpoint(model_id: str, directory: Path, seed: int = 0, max_shard_size: str | None = None,
                            overrides: dict | None = None) -> Path:
    """A checkpoint of `model_id`'s published config with RANDOM weights, in Hub format.

    `max_shard_size` (e.g. "20MB") writes a sharded checkpoint with its index, as large
    downloads are; `overrides` changes config fields (a smaller depth for quick runs).
    """
    import torch
    from transformers import AutoConfig, AutoModel

    if model_id not in OFFICIAL_CONFIGS:
        raise ValueError(f"no published config recorded for {model_id}: choose from {', '.join(OFFICIAL_CONFIGS)}")
    fields = {**OFFICIAL_CONFIGS[model_id], **(overrides or {})}
    model_type = fields.pop("model_type")
    fields.pop("architectures")
    config = AutoConfig.for_model(model_type, **fields)
    config.architectures = [OFFICIAL_CONFIGS[model_id]["architectures"][0]]
    torch.manual_seed(seed)
    model = AutoModel.from_config(config).eval()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), safe_serialization=True, **kwargs)
    (directory / PREPROCESSOR_FILE).write_text(json.dumps(official_preprocessor(model_id), indent=2) + "\n")
    return directory
