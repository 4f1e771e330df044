"""Stage 1, encoding: a frozen HuggingFace encoder that turns batches of RGB frames (or clips) into token grids.

ViS4mer (Sec. 4, LVU) feeds the decoder every token of ViT-L/16 (ImageNet-21k): CLS + 14 x 14 patches = 197 tokens of
1024 channels per frame; for Breakfast and COIN it used one feature map of a video transformer per segment.
:func:`load_encoder` builds a :class:`FrozenEncoder` from

* a hub id (default ``google/vit-large-patch16-224-in21k``) or a local folder written by ``save_pretrained``, of one
  of the families in ``extract/families.py`` (ViT/DeiT/BEiT, CLIP and SigLIP vision towers, DINOv2 with or without
  registers, TimeSformer, VideoMAE, ViViT), through that family's transformers class (``trust_remote_code=False``;
  nothing is fetched when ``HF_HUB_OFFLINE=1``);
* the preset ``vit-tiny-random`` (``PRESETS``): a seeded, *randomly initialised* tiny ViT built from a config, for
  offline runs, tests and the demo (its features carry no meaning; the cache attrs and the log say so).
A name that is none of these is refused, with the closest preset or default, before anything touches the network.

Input size, resizing (exact, or shortest edge then centre crop; the resampling filter) and normalisation (rescale
factor, ViViT's offset, mean/std) come from the checkpoint's own image processor (``AutoImageProcessor``, i.e. its
``preprocessor_config.json``); without one, frames are resized to ``config.image_size`` and normalised with the ViT
defaults 0.5/0.5 (which ``describe`` says for a local folder). Frames arrive resized and cropped by FFmpeg
(``extract/video.py``, ``Resize``) as uint8 (N, H, W, 3); rescaling and normalisation run on the device. When the
processor's input size differs from the config's (DINOv2: 224 against 518) the position embeddings are interpolated
by the model.

Tokens are ``last_hidden_state``: S special tokens (``special_tokens``: CLS, distillation, registers; none for SigLIP
and VideoMAE), then the patch grid. A video encoder takes ``num_frames`` consecutive frames of the batch as one clip
and its grid tokens are averaged over time, so every family gives (S + h * w) tokens per cached segment. ``POOL=k``
averages k x k cells of the grid and keeps the special tokens. Output is float16.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.errors import UserError
from extract import DEFAULT_ENCODER, DEFAULT_ENCODERS
from extract.families import FAMILIES, Family, family_of, tag_name
from extract.resize import Resize

TINY_RANDOM = "vit-tiny-random"
TINY_SEED = 0


def tiny_random_config():
    """The ``vit-tiny-random`` preset: 32 x 32 input, 8 x 8 patches (4 x 4 grid, 17 tokens), 64 channels, 2 layers."""
    from transformers import ViTConfig

    return ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True,
    )


def build_tiny_random():
    """The seeded random tiny ViT (same weights every call; the global torch RNG is left untouched)."""
    from transformers import ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = ViTModel(tiny_random_config(), add_pooling_layer=False)
    return model


# PIL resampling codes (transformers' ``resample``) -> swscale filters, the nearest match of each.
_SWSCALE_FILTER = {0: "POINT", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "AREA", 5: "BILINEAR"}


@dataclass(frozen=True)
class Preprocess:
    """Pixel normalisation: x = (rgb * rescale - offset - mean) / std, per channel (ViViT's processor: offset 1)."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale: float = 1 / 255
    offset: float = 0.0

    @classmethod
    def from_processor(cls, processor) -> Preprocess:
        """The numbers of a transformers image processor (its ``do_*`` switches honoured)."""
        normalize = getattr(processor, "do_normalize", True)
        mean = tuple(processor.image_mean) if normalize else (0.0,)
        std = tuple(processor.image_std) if normalize else (1.0,)
        do_rescale = getattr(processor, "do_rescale", True)
        rescale = float(processor.rescale_factor) if do_rescale else 1.0
        offset = 1.0 if do_rescale and getattr(processor, "offset", False) else 0.0
        mean, std = (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)
        return cls(tuple(map(float, mean)), tuple(map(float, std)), rescale, offset)


def _size_dict(size) -> dict:
    """A processor's ``size``/``crop_size`` (a dict or transformers' SizeDict) as a plain dict of the set keys."""
    keys = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    return {key: get(key) for key in keys if get(key) is not None}


def input_plan(processor, image_size: int | tuple[int, int], name: str) -> tuple[Preprocess, Resize]:
    """Normalisation and the resize/crop plan of ``processor``; ``image_size`` (the config's) when there is none.

    Raises UserError for a size rule a fixed-size encoder input cannot follow (e.g. ``longest_edge``).
    """
    if processor is None:
        return Preprocess(), Resize.exact(image_size)
    size = _size_dict(getattr(processor, "size", None) or {})
    cropping = getattr(processor, "do_center_crop", False)
    crop = _size_dict(getattr(processor, "crop_size", None) or {}) if cropping else {}
    crop_hw = (int(crop["height"]), int(crop["width"])) if crop else None
    resample = getattr(processor, "resample", 2)
    interpolation = _SWSCALE_FILTER.get(int(resample) if resample is not None else 2, "BILINEAR")
    if not getattr(processor, "do_resize", True):
        resize = Resize.exact(image_size, interpolation)
    elif set(size) == {"height", "width"}:
        resize = Resize(size=(int(size["height"]), int(size["width"])), crop=crop_hw, interpolation=interpolation)
    elif set(size) == {"shortest_edge"} and crop_hw is not None:
        resize = Resize(shortest_edge=int(size["shortest_edge"]), crop=crop_hw, interpolation=interpolation)
    else:
        raise UserError(f"ENCODER={name}: its image processor resizes with {size} and crop {crop or 'none'}; stage 1 "
                        "needs one input size for every frame ({height, width}, or shortest_edge with a centre crop)")
    return Preprocess.from_processor(processor), resize


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) over the parameter and buffer names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)};".encode())
        digest.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()[:16]


class FrozenEncoder(torch.nn.Module):
    """uint8 frames (N, H, W, 3) -> float16 tokens (N / F, P, D), F = ``frames_per_item`` (1, or a clip's frames).

    P = S + (h / pool) * (w / pool): the S special tokens (CLS, distillation, registers) and the pooled patch grid;
    a video encoder's grid tokens are averaged over its temporal tokens. ``family`` defaults to the one named by
    ``model.config.model_type``; ``resize`` to an exact resize to ``config.image_size``.
    """

    def __init__(self, model: torch.nn.Module, name: str, preprocess: Preprocess = Preprocess(),
                 pool: int | None = None, family: Family | None = None, resize: Resize | None = None):
        super().__init__()
        config = model.config
        self.family = family or family_of(config.model_type, name)
        for key in ("image_size", "hidden_size"):
            if not isinstance(getattr(config, key, None), (int, list, tuple)):
                raise UserError(f"ENCODER={name} ({config.model_type}) has no {key} in its config; supported "
                                f"families: {', '.join(FAMILIES)}")
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.preprocess = preprocess
        size = config.image_size
        self.resize = resize or Resize.exact(size if isinstance(size, int) else tuple(size))
        self.image_size = self.resize.output
        self.patch_size = self.family.patch_size(config)
        self.hidden_size = int(config.hidden_size)
        self.special_tokens = self.family.special_tokens(config)
        self.frames_per_item = self.family.num_frames(config)
        self.time_tokens = self.frames_per_item // self.family.tubelet(config)
        self.patch_grid = (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)
        k = int(pool) if pool else 1
        if k < 1 or self.patch_grid[0] % k or self.patch_grid[1] % k:
            raise UserError(
                f"POOL={pool} must divide the patch grid {self.patch_grid[0]}x{self.patch_grid[1]} of {name} "
                f"(e.g. POOL=2 for a 14x14 grid is invalid, POOL=7 or 14 works); leave POOL empty for the full grid"
            )
        self.pool = k
        self.grid = (self.patch_grid[0] // k, self.patch_grid[1] // k)
        configured = (size, size) if isinstance(size, int) else tuple(size)
        accepts = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        self._forward_kw = {"interpolate_pos_encoding": True} if accepts and configured != self.image_size else {}
        scale = torch.tensor([preprocess.rescale / s for s in preprocess.std]).view(1, 3, 1, 1)
        shift = torch.tensor([-(preprocess.offset + m) / s for m, s in zip(preprocess.mean, preprocess.std)])
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)
        self.weights_hash = weights_hash(self.model)
        self._tokens_per_item: int | None = None

    @property
    def tokens_per_item(self) -> int:
        """P: the special tokens + the pooled grid, per frame (image families) or per clip (one dummy forward)."""
        if self._tokens_per_item is None:
            dummy = torch.zeros(self.frames_per_item, *self.image_size, 3, dtype=torch.uint8, device=self.scale.device)
            self._tokens_per_item = int(self(dummy).shape[1])
        return self._tokens_per_item

    def attrs(self) -> dict:
        """Provenance attrs for the shard files (``special_tokens``: how many tokens precede the grid)."""
        return {
            "encoder": self.name,
            "encoder_hash": self.weights_hash,
            "family": self.family.name,
            "image_size": int(self.image_size[0]),
            "patch_size": int(self.patch_size),
            "hidden_size": int(self.hidden_size),
            "grid": [int(self.grid[0]), int(self.grid[1])],
            "special_tokens": int(self.special_tokens),
            "pool": int(self.pool),
        }

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float32 (N, 3, H, W)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or tuple(frames.shape[1:3]) != self.image_size:
            raise ValueError(f"Expected uint8 frames (N, {self.image_size[0]}, {self.image_size[1]}, 3), "
                             f"got {tuple(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).float()  # (N, 3, H, W)
        return x * self.scale + self.shift  # (N, 3, H, W)

    @torch.inference_mode()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) on the encoder's device, N a multiple of F -> float16 tokens (N / F, P, D)."""
        pixel_values = self.pixel_values(frames)  # (N, 3, H, W)
        f = self.frames_per_item
        if f > 1:
            if pixel_values.shape[0] % f:
                raise ValueError(f"Expected a multiple of {f} frames (whole clips), got {pixel_values.shape[0]}")
            pixel_values = pixel_values.reshape(-1, f, *pixel_values.shape[1:])  # (B, F, 3, H, W)
        if pixel_values.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                hidden = self.model(pixel_values=pixel_values, **self._forward_kw).last_hidden_state  # (B, P0, D)
        else:
            hidden = self.model(pixel_values=pixel_values, **self._forward_kw).last_hidden_state  # (B, P0, D)
        return self.pool_tokens(self.spatial_tokens(hidden.float())).to(torch.float16)  # (B, P, D)

    def spatial_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, S + t*h*w, D) -> (B, S + h*w, D): a video encoder's grid averaged over its t temporal tokens."""
        b, p0, d = hidden.shape
        s, t = self.special_tokens, self.time_tokens
        h, w = self.patch_grid
        if p0 != s + t * h * w:
            raise ValueError(f"Expected {s} special + {t} x {h} x {w} grid tokens from {self.name} "
                             f"({self.family.name}), got {p0}")
        if t == 1:
            return hidden
        grid = hidden[:, s:]  # (B, t*h*w, D)
        if self.family.time_fastest:
            grid = grid.reshape(b, h * w, t, d).mean(2)  # (B, h*w, D)
        else:
            grid = grid.reshape(b, t, h * w, d).mean(1)  # (B, h*w, D)
        return torch.cat([hidden[:, :s], grid], dim=1)  # (B, S + h*w, D)

    def pool_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, S + h*w, D) -> (B, S + (h/k)*(w/k), D): k x k average over the patch grid, special tokens kept."""
        if self.pool == 1:
            return hidden
        b, _, d = hidden.shape
        h, w = self.patch_grid
        s = self.special_tokens
        grid = hidden[:, s:].reshape(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
        pooled = F.avg_pool2d(grid, self.pool)  # (B, D, h/k, w/k)
        pooled = pooled.flatten(2).transpose(1, 2)  # (B, h/k * w/k, D)
        return torch.cat([hidden[:, :s], pooled], dim=1)  # (B, S + h/k * w/k, D)


def _offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(k, "") not in ("", "0", "false", "False") for k in flags)


def _first_sentence(text: str) -> str:
    """The first sentence of a library's message, whole (a cut at a fixed length ends mid-sentence)."""
    text = " ".join(text.split())
    end = text.find(". ")
    return text[: end + 1] if end > 0 else text


PRESETS = (TINY_RANDOM,)  # names load_encoder builds itself, without a hub or a folder


def check_name(name: str) -> Path | None:
    """The local folder `name` names, or None for a hub id; a name that can only be a typo raises UserError before
    anything touches the network (hub ids are `org/name`; a bare name is a preset or a folder here)."""
    import difflib

    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.suffix:
        raise UserError(
            f"ENCODER={name} is neither a folder nor a hub id; give a folder saved with save_pretrained, a hub id "
            f"such as {DEFAULT_ENCODER}, or {TINY_RANDOM}"
        )
    if "/" not in name:
        known = {n: n for n in PRESETS} | {hub_id.split("/")[-1]: hub_id for hub_id in DEFAULT_ENCODERS.values()}
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        hint = f"did you mean {known[close[0]]}? " if close else ""
        raise UserError(
            f"ENCODER={name} is not a preset ({', '.join(PRESETS)}), a folder here, or a hub id (org/name); {hint}"
            f"give one of those, e.g. {DEFAULT_ENCODER}"
        )
    return None


def _not_available(name: str, exc: BaseException) -> UserError:
    detail = _first_sentence(str(exc))
    if _offline():
        return UserError(
            f"encoder '{name}' is not available locally and HF_HUB_OFFLINE=1 forbids downloading it. Provide it: "
            f"ENCODER=/path/to/folder (a model saved with save_pretrained), or on a machine with internet run "
            f"`hf download {name}` and copy ~/.cache/huggingface here, or unset HF_HUB_OFFLINE; "
            f"for an offline smoke test use ENCODER={TINY_RANDOM}"
        )
    return UserError(
        f"cannot load encoder '{name}' ({detail}); give a HuggingFace hub id such as {DEFAULT_ENCODER}, a local "
        f"folder saved with save_pretrained, or {TINY_RANDOM}"
    )


@contextlib.contextmanager
def _quiet_transformers(source: str | None = None):
    """transformers' load reports (a CLIP checkpoint's unused text tower, ...) are noise here: errors only. Its
    "Loading weights" bar too when `source`'s weights are already on disk (a local folder, or the HF cache), unless
    VERBOSE=1; a download keeps its progress bars (minutes for a ViT-L)."""
    from transformers.utils import logging as hf_logging

    from data.console import verbose_enabled

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hide = bars and source is not None and not verbose_enabled() and _weights_on_disk(source)
    if hide:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if hide:
            hf_logging.enable_progress_bar()


def _weights_on_disk(source: str) -> bool:
    """True when loading `source` reads no network: a local folder, offline mode, or a config in the HF cache (the
    weights were fetched with it)."""
    if Path(source).expanduser().is_dir() or _offline():
        return True
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(source, "config.json"), str)
    except ValueError:  # not a repo id
        return False


@dataclass
class EncoderSpec:
    """An encoder resolved from its name without loading weights: what the cache tag and sampling need."""

    name: str
    family: Family
    config: object  # the (vision) config of the checkpoint
    source: str | None  # what from_pretrained loads (None for the preset)

    @property
    def tag_name(self) -> str:
        return tag_name(self.name, self.family)

    @property
    def num_frames(self) -> int:
        return self.family.num_frames(self.config)

    def input_plan(self) -> tuple[Preprocess, Resize]:
        """Normalisation and resize/crop plan from the checkpoint's image processor; reads no weights.

        Raises UserError for a processor size rule without one input size (see ``input_plan``)."""
        if self.source is None:
            return Preprocess(), Resize.exact(self.config.image_size)
        return input_plan(_image_processor(self.source), self.config.image_size, self.name)


def resolve_encoder(name: str | None = None) -> EncoderSpec:
    """Read ``name``'s config (hub id, local folder, or ``vit-tiny-random``) and find its family; no weights.

    Raises UserError for a name that is neither, a checkpoint not available offline, or an unsupported family.
    """
    name = name or DEFAULT_ENCODER
    if name == TINY_RANDOM:
        return EncoderSpec(name, FAMILIES["vit"], tiny_random_config(), None)
    local = check_name(name)
    from transformers import AutoConfig

    source = str(local) if local is not None else name
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if local is not None:
            raise UserError(f"ENCODER={name} is a folder without a readable config.json ({exc}); "
                            "save the model there with save_pretrained") from exc
        raise _not_available(name, exc) from exc
    family = family_of(config.model_type, name)
    vision = getattr(config, "vision_config", None)  # a dual encoder (CLIP, SigLIP): its vision tower's config
    return EncoderSpec(name, family, vision if vision is not None else config, source)


def _image_processor(source: str):
    """The checkpoint's image processor (PIL backend, never remote code), or None when it has none."""
    from transformers import AutoImageProcessor

    try:
        with _quiet_transformers():
            return AutoImageProcessor.from_pretrained(source, backend="pil", trust_remote_code=False,
                                                      local_files_only=_offline())
    except (OSError, ValueError):  # no preprocessor_config.json: config.image_size and the ViT defaults
        return None


def load_encoder(name: str | EncoderSpec | None = None, pool: int | None = None,
                 device: str | torch.device = "cpu") -> FrozenEncoder:
    """Load ``name`` (hub id, local folder, ``vit-tiny-random``, or a resolved spec) frozen on ``device``.

    Raises UserError for an unknown or unsupported encoder, a checkpoint that lacks weights of its model class (they
    would be random), a processor size rule without one input size, or a ``pool`` that does not divide the grid.
    """
    spec = name if isinstance(name, EncoderSpec) else resolve_encoder(name)
    if spec.source is None:
        return FrozenEncoder(build_tiny_random(), TINY_RANDOM, Preprocess(), pool).to(device)
    import transformers

    model_class = getattr(transformers, spec.family.model_class)
    try:
        with _quiet_transformers(spec.source):
            model, info = model_class.from_pretrained(spec.source, trust_remote_code=False, dtype=torch.float32,
                                                      output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise _not_available(spec.name, exc) from exc
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        raise UserError(f"ENCODER={spec.name}: the checkpoint lacks {len(missing)} weight(s) of its "
                        f"{spec.family.model_class} (e.g. {missing[0]}), which would be random; give the "
                        f"checkpoint of a {spec.family.name} model")
    if getattr(model, "pooler", None) is not None:
        # Unused (we keep last_hidden_state), and initialised at random when a checkpoint lacks it, which would make
        # the weights hash differ from load to load.
        model.pooler = None
    preprocess, resize = spec.input_plan()
    encoder = FrozenEncoder(model, spec.name, preprocess, pool, spec.family, resize).to(device)
    try:
        encoder.tokens_per_item  # noqa: B018 - one dummy forward checks the token layout before any video
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"ENCODER={spec.name} does not run at its processor's input size "
                        f"{resize.output[0]}x{resize.output[1]} ({' '.join(str(exc).split())[:200]})") from exc
    return encoder


def describe(encoder: FrozenEncoder) -> str:
    """One log line that names the encoder honestly."""
    h, w = encoder.grid
    special = f"{encoder.special_tokens} special + " if encoder.special_tokens else ""
    per = f"per clip of {encoder.frames_per_item} frames" if encoder.frames_per_item > 1 else "per frame"
    shape = (f"{special}{h}x{w} tokens x {encoder.hidden_size} channels {per}, input "
             f"{encoder.image_size[0]}x{encoder.image_size[1]} px")
    if encoder.name == TINY_RANDOM:
        return (f"encoder {TINY_RANDOM}: a RANDOMLY initialised tiny ViT (seed {TINY_SEED}, hash "
                f"{encoder.weights_hash}); its features carry no meaning -- tests and demo only; {shape}")
    line = f"encoder {encoder.name} ({encoder.family.name}, weights {encoder.weights_hash}); {shape}"
    folder = Path(encoder.name).expanduser()
    if folder.is_dir() and not (folder / "preprocessor_config.json").is_file():
        line += (f"; {folder} has no preprocessor_config.json: pixels are normalised with ViT's defaults (mean 0.5, "
                 f"std 0.5); save the model's image processor there (save_pretrained) if it was trained otherwise")
    return line


def segment_means(tokens: np.ndarray, times: np.ndarray, k: int, frames_per_item: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One token grid per segment: tokens (T*k/F, P, D) -> float16 (T, P, D), times (T*k,) -> (T,) seconds.

    F = ``frames_per_item``: an image encoder (F = 1) gives one item per frame and segment t's k frames (rows t*k ..
    t*k + k - 1, in target order) are averaged in token space; a video encoder (F = k) gives one item per segment
    already (its clip), kept as it is. The time of a segment is the mean of its k frames' times.
    """
    per_segment = k // frames_per_item  # items per segment: k frames of an image encoder, 1 clip
    t = tokens.shape[0] // per_segment
    times = times.reshape(t, k).mean(1)  # (T,)
    if per_segment > 1:
        tokens = tokens.reshape(t, per_segment, *tokens.shape[1:]).astype(np.float32).mean(1)  # (T, P, D)
    return tokens.astype(np.float16, copy=False), times
