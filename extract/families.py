"""Stage 1, which encoders: the checkpoint families stage 1 accepts and how each one lays out its tokens
(docs/design.md, "Encoders").

ViS4mer (Sec. 4) encodes LVU frames with ViT-L/16 (ImageNet-21k) and Breakfast/COIN segments with a video transformer
(Video Swin-B, Kinetics-600). Today's long-video work also runs on CLIP, SigLIP and DINOv2 features. Every family is
loaded through transformers' own model class (never remote code) and gives ``last_hidden_state``: its special tokens
first, then the patch grid. What differs, and what this registry records:

| family | transformers class | special tokens | grid tokens | frames per item |
|---|---|---|---|---|
| vit, beit | ViTModel, BeitModel | 1 (CLS) | h * w | 1 |
| deit | DeiTModel (distilled checkpoints) | 2 (CLS, distillation) | h * w | 1 |
| clip | CLIPVisionModel (the vision tower of a CLIP checkpoint, or a vision-only one) | 1 (CLS) | h * w | 1 |
| siglip | SiglipVisionModel (likewise) | 0 | h * w | 1 |
| dinov2 | Dinov2Model | 1 (CLS) | h * w | 1 |
| dinov2-with-registers | Dinov2WithRegistersModel | 1 + config.num_register_tokens | h * w | 1 |
| timesformer | TimesformerModel | 1 (CLS) | h * w * t, time fastest | config.num_frames (one clip) |
| videomae | VideoMAEModel | 0 | t' * h * w, t' = num_frames / tubelet | config.num_frames |
| vivit | VivitModel | 1 (CLS) | t' * h * w, t' = num_frames / tubelet | config.num_frames |

A video family's clip is ``num_frames`` frames ``frame_stride`` source frames apart at 30 fps (Kinetics, on which
all three were trained, is mostly 30 fps), the stride the checkpoints were trained with: TimeSformer 8 x 32
(TimeSformer's Kinetics-400/600 configs, ``NUM_FRAMES: 8, SAMPLING_RATE: 32``), VideoMAE 16 x 4 (its Kinetics-400
fine-tuning), ViViT 32 x 2 (its Kinetics-400 models). None of these strides is stored in a checkpoint, hence this table.

Only the standard library is imported here, so the cheap checks of ``python -m extract`` can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from data.errors import UserError

KINETICS_FPS = 30.0


@dataclass(frozen=True)
class Family:
    """One family of checkpoints: its transformers class and the layout of its ``last_hidden_state``."""

    name: str  # in the cache tag and the ``family`` provenance attr
    model_class: str  # the transformers class that loads it (a vision tower for dual encoders)
    model_types: tuple[str, ...]  # config.model_type values it accepts
    special: int  # CLS / distillation tokens before the grid (registers are read from the config)
    video: bool = False
    time_fastest: bool = False  # video grid order: (h, w, t) (TimeSformer) rather than (t, h, w)
    frame_stride: int | None = None  # video: source frames at KINETICS_FPS between a clip's frames

    def special_tokens(self, config) -> int:
        """Tokens before the patch grid: CLS, distillation, register tokens."""
        return self.special + int(getattr(config, "num_register_tokens", 0) or 0)

    def patch_size(self, config) -> int:
        """Spatial patch side in pixels (ViViT keeps it in ``tubelet_size`` = [t, h, w])."""
        patch = getattr(config, "patch_size", None)
        if patch is None:
            patch = list(config.tubelet_size)[1]
        return int(patch if isinstance(patch, int) else patch[0])

    def tubelet(self, config) -> int:
        """Frames per temporal token (1 for image families and TimeSformer)."""
        if not self.video:
            return 1
        size = getattr(config, "tubelet_size", 1)
        return int(size if isinstance(size, int) else list(size)[0])

    def num_frames(self, config) -> int:
        """Frames the encoder takes at once: ``config.num_frames`` for video families, 1 for images."""
        return int(config.num_frames) if self.video else 1

    def frame_interval(self, stride: int | None = None) -> float | None:
        """Seconds between a clip's frames: ``stride`` (default: the family's) source frames at 30 fps."""
        if not self.video:
            return None
        return float(stride or self.frame_stride) / KINETICS_FPS


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("vit", "ViTModel", ("vit",), 1),
    Family("deit", "DeiTModel", ("deit",), 2),
    Family("beit", "BeitModel", ("beit",), 1),
    Family("clip", "CLIPVisionModel", ("clip", "clip_vision_model"), 1),
    Family("siglip", "SiglipVisionModel", ("siglip", "siglip_vision_model"), 0),
    Family("dinov2", "Dinov2Model", ("dinov2",), 1),
    Family("dinov2-with-registers", "Dinov2WithRegistersModel", ("dinov2_with_registers",), 1),
    Family("timesformer", "TimesformerModel", ("timesformer",), 1, video=True, time_fastest=True, frame_stride=32),
    Family("videomae", "VideoMAEModel", ("videomae",), 0, video=True, frame_stride=4),
    Family("vivit", "VivitModel", ("vivit",), 1, video=True, frame_stride=2),
)}
_BY_MODEL_TYPE = {model_type: f for f in FAMILIES.values() for model_type in f.model_types}


def family_of(model_type: str, name: str) -> Family:
    """The family of a checkpoint whose config says ``model_type``; UserError listing the supported ones."""
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    raise UserError(f"ENCODER={name} is a '{model_type}' checkpoint, which stage 1 does not support; supported "
                    f"families: {', '.join(FAMILIES)} (a hub id or a folder saved with save_pretrained)")


def tag_name(name: str, family: Family) -> str:
    """The encoder part of the cache tag: the name's last component, prefixed with the family unless it says it."""
    label = str(name).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return label if family.name in label.lower() else f"{family.name}-{label}"
