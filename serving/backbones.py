"""DINO backbones (transformers `Dinov2Model` / `DINOv3ViTModel`) from local directories.

Loading is offline only: a backbone directory holds `config.json` + the weights
(`model.safetensors`, or shards listed in `model.safetensors.index.json`) in Hugging Face format. `EncoderView` exposes the pieces both families share (embeddings, the
list of blocks, the final norm) so dynamic depth can run the blocks one at a time.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402
from transformers import Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel  # noqa: E402
from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTRopePositionEmbedding  # noqa: E402

from serving.bundles import ModelLoadError  # noqa: E402

# Loading bars and deprecation chatter from transformers/peft would only clutter service logs.
transformers_logging.disable_progress_bar()
transformers_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

FAMILIES = {
    "dinov2": (Dinov2Config, Dinov2Model, "dinov2"),
    "dinov3": (DINOv3ViTConfig, DINOv3ViTModel, "dinov3_vit"),
}

# Shapes of the published checkpoints (facebook/dinov2-{small,base}, facebook/dinov3-vit{s,b}16-*).
REAL_SIZES = {
    "S": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "B": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# Modules that must stay in eval mode while adapters train (DINOv3's RoPE augments positions in train mode).
ROPE_MODULES = (DINOv3ViTRopePositionEmbedding,)


def backbone_config(family: str, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
                    image_size: int, initializer_range: float = 0.02):
    """A config of the real architecture at the given size (DINOv3: 4 registers, RoPE, as released).

    `initializer_range` only matters for random weights: a wider init than the 0.02 used before
    pre-training gives a random network sharper attention and more varied features.
    """
    if family == "dinov2":
        return Dinov2Config(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                            num_attention_heads=num_attention_heads, mlp_ratio=4, patch_size=14,
                            image_size=image_size, initializer_range=initializer_range)
    if family == "dinov3":
        return DINOv3ViTConfig(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                               num_attention_heads=num_attention_heads, intermediate_size=4 * hidden_size,
                               patch_size=16, image_size=image_size, num_register_tokens=4,
                               initializer_range=initializer_range)
    raise ValueError(f"unknown backbone family {family!r}")


def random_backbone(family: str, seed: int = 0, **size) -> torch.nn.Module:
    """A randomly initialized backbone (no weights exist on this machine to download)."""
    config = backbone_config(family, **size)
    torch.manual_seed(seed)
    return FAMILIES[family][1](config).eval()


def real_size_backbone(family: str, size: str, seed: int = 0) -> torch.nn.Module:
    # The released DINOv2 checkpoints keep 518px position embeddings and interpolate them.
    image_size = 518 if family == "dinov2" else 224
    return random_backbone(family, seed=seed, image_size=image_size, **REAL_SIZES[size])


def pick_device(device: str | None = None) -> torch.device:
    """`device`, or CUDA when a GPU is visible, else the CPU."""
    return torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_device_dtype(device: str | None = None, dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The device, and bf16 where it computes bf16 natively (dtype auto; see serving.precision), else fp32."""
    from serving.precision import choose

    dev = pick_device(device)
    return dev, choose(dev, dtype).dtype


def save_backbone(model: torch.nn.Module, directory: str | Path) -> None:
    model.save_pretrained(str(directory), safe_serialization=True)


def load_backbone(directory: str | Path, family: str, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load a backbone from a local HF directory, or raise ModelLoadError naming the directory."""
    directory = Path(directory)
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown backbone family {family!r}")
    config_cls, model_cls, model_type = FAMILIES[family]
    expect = f"expected config.json and model.safetensors (or its shard index) of a {model_cls.__name__} in {directory}"
    if not (directory / "config.json").is_file() or not any((directory / f).is_file() for f in WEIGHT_FILES):
        raise ModelLoadError(f"backbone weights missing: {expect}")
    try:
        config = config_cls.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # transformers raises several types for a bad config
        raise ModelLoadError(f"backbone config unreadable ({type(e).__name__}: {e}): {expect}") from None
    if config.model_type != model_type:
        raise ModelLoadError(f"backbone in {directory} is a {config.model_type!r} model, not {family}")
    model = _load_direct(directory, model_cls, config)
    if model is None:  # a checkpoint whose names need transformers' conversions
        try:
            model = model_cls.from_pretrained(str(directory), config=config, local_files_only=True, dtype=dtype)
        except Exception as e:
            raise ModelLoadError(f"backbone weights unreadable ({type(e).__name__}: {str(e)[:200]}): {expect}") from None
    return model.to(device=device, dtype=dtype).eval()


def _load_direct(directory: Path, model_cls, config) -> torch.nn.Module | None:
    """The model built without initialising weights, its tensors taken as safetensors loads them.

    About a second faster than `from_pretrained` for a small model (which builds its checkpoint
    conversion tables first); None when the file's names are not exactly the model's, so the
    caller falls back to `from_pretrained` and its conversions.
    """
    from safetensors.torch import load_file

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers before 5.x kept it in modeling_utils
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return None

    index = directory / "model.safetensors.index.json"
    try:
        if index.is_file():
            import json

            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(str(directory / shard)))
        else:
            state = load_file(str(directory / "model.safetensors"))
    except Exception as e:
        raise ModelLoadError(f"backbone weights unreadable in {directory} ({type(e).__name__}: {str(e)[:200]})") from None
    with no_init_weights():
        model = model_cls(config)
    if set(state) != set(model.state_dict()):
        return None
    # assign: the parameters become the loaded tensors, no second copy of the weights.
    model.load_state_dict(state, strict=True, assign=True)
    return model


class EncoderView:
    """What both families share, so the blocks can be run one by one (see dynamic_depth)."""

    def __init__(self, model: torch.nn.Module):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if isinstance(base, DINOv3ViTModel):
            self.family = "dinov3"
            self.layers = base.model.layer
            self.norm = base.norm
            self.prefix_tokens = 1 + base.config.num_register_tokens
        elif isinstance(base, Dinov2Model):
            self.family = "dinov2"
            self.layers = base.encoder.layer
            self.norm = base.layernorm
            self.prefix_tokens = 1
        else:
            raise TypeError(f"not a DINO backbone: {type(base).__name__}")
        self.base = base
        self.hidden_size = base.config.hidden_size
        self.num_layers = len(self.layers)

    @property
    def feature_dim(self) -> int:
        return 2 * self.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Token embeddings and the keyword arguments every block needs (RoPE for DINOv3)."""
        pixel_values = pixel_values.to(device=self.norm.weight.device, dtype=self.dtype)
        hidden = self.base.embeddings(pixel_values)
        if self.family == "dinov3":
            # (cos, sin) of shape (patches, head_dim): no batch axis, so valid for any subset of rows.
            return hidden, {"position_embeddings": self.base.rope_embeddings(pixel_values)}
        # Nothing more for DINOv2: transformers before ~5.20 has no `attention_mask` parameter on
        # Dinov2Layer.forward (the GPU host's 5.17 raised TypeError), and None is its default after.
        return hidden, {}

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, then [CLS, mean of patch tokens] (registers excluded), all in float32.

        The heads and OOD statistics are fitted on fp32 features; a bf16 norm and mean move a
        pooled feature by up to ~1% and flip decisions, so this step never runs in bf16.
        """
        norm = self.norm
        weight = None if norm.weight is None else norm.weight.float()
        bias = None if norm.bias is None else norm.bias.float()
        normed = torch.nn.functional.layer_norm(hidden.float(), norm.normalized_shape, weight, bias, norm.eps)
        cls = normed[:, 0]
        patches = normed[:, self.prefix_tokens:].mean(dim=1)
        return torch.cat([cls, patches], dim=-1)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden, kwargs = self.embed(pixel_values)
        for layer in self.layers:
            hidden = layer(hidden, **kwargs)
        return self.pool(hidden)
