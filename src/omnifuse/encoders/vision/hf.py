"""Any Hugging Face ViT-style vision tower (CLIP, SigLIP, ViT, DINOv2, …) as a patch-token encoder.

The tower runs with ``output_hidden_states=True`` and the encoder returns ``hidden_states[layer]``
(``-1`` = the last block, ``-2`` = LLaVA's penultimate layer), minus the leading CLS/register tokens
when ``drop_cls`` is set. How many leading tokens a tower adds is measured once from its embedding
layer rather than guessed from its name, so SigLIP (none), CLIP/ViT (one CLS) and DINOv2 with
registers (CLS + registers) are all handled the same way.

Preprocessing mirrors the model's own image-processor config (mean/std, resize, centre crop,
resampling) but is done here with PIL + numpy, so no torchvision-backed processor is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel

from omnifuse.assets import check_local, check_model_folder, load_pretrained, pretrained_kwargs
from omnifuse.encoders.vision.cnn import kept_region, resize_image, to_tensor
from omnifuse.errors import OmnifuseError

DEFAULT_MEAN = (0.5, 0.5, 0.5)  # HF's IMAGENET_STANDARD_* values, used when a tower ships no processor config
DEFAULT_STD = (0.5, 0.5, 0.5)


class HFVisionEncoder(nn.Module):
    """Wraps a built HF vision tower: ``forward(pixel_values)`` → [B, P, hidden_size] patch tokens."""

    def __init__(
        self,
        tower: PreTrainedModel,
        layer: int = -1,
        drop_cls: bool = True,
        image_size: int = 224,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
        resize_shorter: int | None = None,
        resample: int = Image.BICUBIC,
    ) -> None:
        super().__init__()
        self.tower = tower
        n_states = tower.config.num_hidden_layers + 1  # embeddings output + one per block
        if not -n_states <= layer < n_states:
            raise OmnifuseError(
                f"vision layer {layer} does not exist: this tower has {tower.config.num_hidden_layers} blocks, so "
                f"layer must lie in [{-n_states}, {n_states - 1}] (-1 = last block, -2 = penultimate, 0 = embeddings)."
            )
        if resize_shorter is not None and resize_shorter < image_size:
            raise ValueError(f"resize_shorter ({resize_shorter}) must be at least image_size ({image_size})")
        self.layer = layer
        self.drop_cls = drop_cls
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.resize_shorter = resize_shorter
        self.resample = resample
        self.output_dim = tower.config.hidden_size
        self.patch_size = _as_int(tower.config.patch_size)
        self.num_prefix_tokens = self._count_prefix_tokens()

    @torch.no_grad()
    def _count_prefix_tokens(self) -> int:
        """Leading non-patch tokens (CLS, registers): sequence length minus patch count on a dummy image.
        Only the embedding layer runs when the tower exposes one (cheap even for large towers)."""
        size = self.image_size
        dummy = torch.zeros(1, 3, size, size, dtype=next(self.tower.parameters()).dtype)
        embeddings = getattr(self.tower, "embeddings", None)
        if isinstance(embeddings, nn.Module):
            seq = embeddings(dummy).shape[1]
        else:
            seq = self.tower(pixel_values=dummy, output_hidden_states=True).hidden_states[0].shape[1]
        return seq - (size // self.patch_size) ** 2

    def grid(self, image_size: int | None = None) -> tuple[int, int]:
        n = (self.image_size if image_size is None else image_size) // self.patch_size
        return n, n

    def input_region(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width``×``height`` image that :meth:`preprocess` keeps (left, top, right, bottom)."""
        return kept_region(width, height, self.image_size, self.resize_shorter)

    def token_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the patch tokens; None when CLS/register tokens are kept in front of them."""
        return self.grid() if self.drop_cls or self.num_prefix_tokens == 0 else None

    def num_tokens(self) -> int:
        h, w = self.grid()
        return h * w + (0 if self.drop_cls else self.num_prefix_tokens)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return to_tensor(
            resize_image(image, self.image_size, self.resize_shorter, self.resample), self.mean, self.std
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values=pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[self.layer]
        return hidden[:, self.num_prefix_tokens :] if self.drop_cls else hidden


def _as_int(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _vision_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """The vision part of a dual-tower config (CLIP, SigLIP), else the config itself."""
    sub = getattr(config, "vision_config", None)
    return sub if isinstance(sub, PreTrainedConfig) else config


def _side(value) -> int | None:
    """An image-processor size entry (int, or dict with shortest_edge / height) → pixels."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("shortest_edge", "height"):
            if isinstance(value.get(key), int):
                return value[key]
    return None


def preprocessing_args(processor: dict, default_size: int) -> dict:
    """Flat HFVisionEncoder arguments from an image-processor config dict (possibly empty)."""
    size = _side(processor.get("size"))
    crop = _side(processor.get("crop_size")) if processor.get("do_center_crop") else None
    if crop is not None:
        image_size, shorter = crop, max(size or crop, crop)
    else:
        image_size, shorter = size or default_size, None
    resample = processor.get("resample")
    return {
        "image_size": image_size,
        "resize_shorter": shorter,
        "mean": tuple(processor.get("image_mean") or DEFAULT_MEAN),
        "std": tuple(processor.get("image_std") or DEFAULT_STD),
        "resample": int(resample) if isinstance(resample, int) else Image.BICUBIC,
    }


def from_config(
    config: PreTrainedConfig, layer: int = -1, drop_cls: bool = True, **preprocessing
) -> HFVisionEncoder:
    """A randomly initialised tower from a config (tests, or training a tower from scratch).
    ``preprocessing`` overrides image_size/mean/std/resize_shorter/resample."""
    vision = _vision_config(config)
    tower = AutoModel.from_config(vision)
    args = preprocessing_args({}, _as_int(vision.image_size)) | preprocessing
    return HFVisionEncoder(tower.float(), layer=layer, drop_cls=drop_cls, **args).eval()


def _processor_dict(name_or_path: str) -> dict:
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        processor, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path)
    except (OSError, ValueError):  # no preprocessor_config.json: fall back to the model config's size
        return {}
    return processor


def build_hf_vision(name_or_path: str, layer: int = -1, drop_cls: bool = True) -> HFVisionEncoder:
    """Load a vision tower (HF id or local folder) with its preprocessing, in eval mode, fp32.
    For dual-tower checkpoints (CLIP, SigLIP) only the vision tower is kept."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        check_model_folder(folder, "vision tower", "AutoModel")
    else:
        check_local(name_or_path, "vision tower")
    hint = (
        "Use a local folder with config.json and safetensors weights, or a Hugging Face id on a machine with "
        "hub access; for offline use, the packaged CNNs (type: mobilenet_v2 or efficientnet_lite0) need no "
        "download."
    )
    config = load_pretrained(
        lambda: AutoConfig.from_pretrained(name_or_path), "vision tower", name_or_path, name_or_path, hint
    )
    model = load_pretrained(
        lambda: AutoModel.from_pretrained(name_or_path, dtype=torch.float32, **pretrained_kwargs()),
        "vision tower",
        name_or_path,
        name_or_path,
        hint,
    )
    vision = _vision_config(config)
    tower = model
    if vision is not config:  # dual tower: keep only the image side
        tower = getattr(model, "vision_model", None)
        if not isinstance(tower, PreTrainedModel):
            raise OmnifuseError(
                f"{name_or_path!r} ({type(model).__name__}) has a vision config but no `vision_model` tower; "
                "use a CLIP/SigLIP checkpoint or a plain vision model (ViT, DINOv2, CLIPVisionModel)."
            )
    if not hasattr(tower.config, "patch_size"):
        raise OmnifuseError(
            f"{name_or_path!r} ({type(tower).__name__}) is not a ViT-style tower with patch tokens; use CLIP, "
            "SigLIP, ViT or DINOv2 (or a packaged CNN encoder)."
        )
    args = preprocessing_args(_processor_dict(name_or_path), _as_int(vision.image_size))
    return HFVisionEncoder(tower, layer=layer, drop_cls=drop_cls, **args).eval()
