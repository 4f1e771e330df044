"""Stage 1, encoding: a frozen HuggingFace ViT that turns batches of RGB frames into token grids.

ViS4mer (Sec. 4, LVU) feeds the decoder every token of ViT-L/16 (ImageNet-21k): CLS + 14 x 14 patches = 197 tokens of
1024 channels per frame. :func:`load_encoder` builds a :class:`FrozenEncoder` from

* a hub id (default ``google/vit-large-patch16-224-in21k``) or a local folder written by ``save_pretrained`` --
  ``from_pretrained`` with ``trust_remote_code=False``; nothing is fetched when ``HF_HUB_OFFLINE=1``;
* the preset ``vit-tiny-random``: a seeded, *randomly initialised* tiny ViT built from a config, for offline runs,
  tests and the demo (its features carry no meaning; the cache attrs and the log say so).

Normalisation (mean/std) comes from the model's ``preprocessor_config.json`` when present (ViT defaults 0.5/0.5
otherwise); the input size is the model's ``config.image_size`` (its position embeddings fix it). Frames arrive already
resized to that size by FFmpeg (``extract/video.py``), as uint8 (B, H, W, 3); rescaling and normalisation run on the
device. Tokens are ``last_hidden_state`` (special tokens first, then the patch grid), optionally average-pooled
k x k over the grid with the special tokens kept, returned as float16.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.errors import UserError
from extract import DEFAULT_ENCODER

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


@dataclass(frozen=True)
class Preprocess:
    """Pixel normalisation: x = (rgb * rescale - mean) / std, per channel."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale: float = 1 / 255

    @classmethod
    def from_processor_config(cls, config: dict) -> Preprocess:
        mean = tuple(config.get("image_mean", cls.mean)) if config.get("do_normalize", True) else (0.0, 0.0, 0.0)
        std = tuple(config.get("image_std", cls.std)) if config.get("do_normalize", True) else (1.0, 1.0, 1.0)
        rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
        if len(mean) == 1:
            mean = mean * 3
        if len(std) == 1:
            std = std * 3
        return cls(tuple(map(float, mean)), tuple(map(float, std)), rescale)


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) over the parameter and buffer names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)};".encode())
        digest.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()[:16]


class FrozenEncoder(torch.nn.Module):
    """uint8 frames (B, H, W, 3) -> float16 tokens (B, P, D); P = special tokens + (h / pool) * (w / pool)."""

    def __init__(self, model: torch.nn.Module, name: str, preprocess: Preprocess = Preprocess(),
                 pool: int | None = None):
        super().__init__()
        config = model.config
        for key in ("image_size", "patch_size", "hidden_size"):
            if not isinstance(getattr(config, key, None), (int, list, tuple)):
                raise UserError(
                    f"ENCODER={name} ({config.model_type}) is not a ViT-style image encoder (its config has no {key}); "
                    f"use a ViT checkpoint such as {DEFAULT_ENCODER}"
                )
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.preprocess = preprocess
        size = config.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        patch = config.patch_size
        self.patch_size = patch if isinstance(patch, int) else int(patch[0])
        self.hidden_size = int(config.hidden_size)
        self.patch_grid = (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)
        k = int(pool) if pool else 1
        if k < 1 or self.patch_grid[0] % k or self.patch_grid[1] % k:
            raise UserError(
                f"POOL={pool} must divide the patch grid {self.patch_grid[0]}x{self.patch_grid[1]} of {name} "
                f"(e.g. POOL=2 for a 14x14 grid is invalid, POOL=7 or 14 works); leave POOL empty for the full grid"
            )
        self.pool = k
        self.grid = (self.patch_grid[0] // k, self.patch_grid[1] // k)
        scale = torch.tensor([preprocess.rescale / s for s in preprocess.std]).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(preprocess.mean, preprocess.std)]).view(1, 3, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.weights_hash = weights_hash(self.model)
        self._tokens_per_frame: int | None = None

    @property
    def tokens_per_frame(self) -> int:
        """P: special tokens (CLS, or CLS + distillation for DeiT) + the pooled patch grid (one dummy forward)."""
        if self._tokens_per_frame is None:
            dummy = torch.zeros(1, *self.image_size, 3, dtype=torch.uint8, device=self.scale.device)
            self._tokens_per_frame = int(self(dummy).shape[1])
        return self._tokens_per_frame

    def attrs(self) -> dict:
        """Provenance attrs for the shard files."""
        return {
            "encoder": self.name,
            "encoder_hash": self.weights_hash,
            "image_size": int(self.image_size[0]),
            "patch_size": int(self.patch_size),
            "hidden_size": int(self.hidden_size),
            "grid": [int(self.grid[0]), int(self.grid[1])],
            "pool": int(self.pool),
        }

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float32 (B, 3, H, W)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or tuple(frames.shape[1:3]) != self.image_size:
            raise ValueError(f"Expected uint8 frames (B, {self.image_size[0]}, {self.image_size[1]}, 3), "
                             f"got {tuple(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        return x * self.scale + self.shift  # (B, 3, H, W)

    @torch.inference_mode()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, H, W, 3) on the encoder's device -> float16 tokens (B, P, D)."""
        pixel_values = self.pixel_values(frames)  # (B, 3, H, W)
        device_type = pixel_values.device.type
        if device_type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                hidden = self.model(pixel_values=pixel_values).last_hidden_state  # (B, P0, D)
        else:
            hidden = self.model(pixel_values=pixel_values).last_hidden_state  # (B, P0, D)
        return self.pool_tokens(hidden.float()).to(torch.float16)  # (B, P, D)

    def pool_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, S + h*w, D) -> (B, S + (h/k)*(w/k), D): k x k average over the patch grid, special tokens kept."""
        if self.pool == 1:
            return hidden
        b, p0, d = hidden.shape
        h, w = self.patch_grid
        s = p0 - h * w  # special tokens precede the patch grid
        grid = hidden[:, s:].reshape(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
        pooled = F.avg_pool2d(grid, self.pool)  # (B, D, h/k, w/k)
        pooled = pooled.flatten(2).transpose(1, 2)  # (B, h/k * w/k, D)
        return torch.cat([hidden[:, :s], pooled], dim=1)  # (B, S + h/k * w/k, D)


def _offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(k, "") not in ("", "0", "false", "False") for k in flags)


def _not_available(name: str, exc: BaseException) -> UserError:
    detail = " ".join(str(exc).split())[:160]
    if _offline():
        return UserError(
            f"encoder '{name}' is not available locally and HF_HUB_OFFLINE=1 forbids downloading it. Provide it: "
            f"ENCODER=/path/to/folder (a model saved with save_pretrained), or on a machine with internet run "
            f"`huggingface-cli download {name}` and copy ~/.cache/huggingface here, or unset HF_HUB_OFFLINE; "
            f"for an offline smoke test use ENCODER={TINY_RANDOM}"
        )
    return UserError(
        f"cannot load encoder '{name}' ({detail}); give a HuggingFace hub id such as {DEFAULT_ENCODER}, a local "
        f"folder saved with save_pretrained, or {TINY_RANDOM}"
    )


def _processor_config(name: str, local: Path | None) -> dict:
    """The model's preprocessor_config.json as a dict, or {} when it has none (never downloads when offline)."""
    try:
        if local is not None:
            path = local / "preprocessor_config.json"
            return json.loads(path.read_text()) if path.is_file() else {}
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name, "preprocessor_config.json", local_files_only=_offline())
        return json.loads(Path(path).read_text())
    except Exception:  # noqa: BLE001 - no processor config: fall back to the ViT defaults (0.5 / 0.5)
        return {}


def load_encoder(name: str | None = None, pool: int | None = None, device: str | torch.device = "cpu") -> FrozenEncoder:
    """Load ``name`` (hub id, local folder, or ``vit-tiny-random``) as a frozen encoder on ``device``."""
    name = name or DEFAULT_ENCODER
    if name == TINY_RANDOM:
        return FrozenEncoder(build_tiny_random(), TINY_RANDOM, Preprocess(), pool).to(device)
    path = Path(name).expanduser()
    local = path if path.is_dir() else None
    if local is None and (name.startswith((".", "/", "~")) or name.count("/") > 1 or path.suffix):
        raise UserError(
            f"ENCODER={name} is neither a folder nor a hub id; give a folder saved with save_pretrained, a hub id "
            f"such as {DEFAULT_ENCODER}, or {TINY_RANDOM}"
        )
    from transformers import AutoConfig, AutoModel

    source = str(local) if local is not None else name
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if local is not None:
            raise UserError(f"ENCODER={name} is a folder without a readable config.json ({exc}); "
                            "save the model there with save_pretrained") from exc
        raise _not_available(name, exc) from exc
    if getattr(config, "vision_config", None) is not None and not hasattr(config, "image_size"):
        raise UserError(f"ENCODER={name} ({config.model_type}) is a multi-modal model; give a ViT-style image encoder "
                        f"such as {DEFAULT_ENCODER}")
    try:
        model = AutoModel.from_pretrained(source, config=config, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _not_available(name, exc) from exc
    if getattr(model, "pooler", None) is not None:
        # Unused (we keep last_hidden_state), and AutoModel initialises it at random when a checkpoint lacks it,
        # which would make the weights hash differ from load to load.
        model.pooler = None
    preprocess = Preprocess.from_processor_config(_processor_config(name, local))
    return FrozenEncoder(model, name, preprocess, pool).to(device)


def describe(encoder: FrozenEncoder) -> str:
    """One log line that names the encoder honestly."""
    h, w = encoder.grid
    shape = f"CLS + {h}x{w} tokens x {encoder.hidden_size} channels per frame, input {encoder.image_size[0]} px"
    if encoder.name == TINY_RANDOM:
        return (f"encoder {TINY_RANDOM}: a RANDOMLY initialised tiny ViT (seed {TINY_SEED}, hash "
                f"{encoder.weights_hash}); its features carry no meaning -- tests and demo only; {shape}")
    return f"encoder {encoder.name} (weights {encoder.weights_hash}); {shape}"


def segment_means(tokens: np.ndarray, times: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Average each segment's k frames in token space: tokens (T*k, P, D) -> float16 (T, P, D), times (T*k,) ->
    (T,) seconds. Frames arrive in target order (segment t's frames are rows t*k .. t*k + k - 1)."""
    t = tokens.shape[0] // k
    times = times.reshape(t, k).mean(1)  # (T,)
    if k > 1:
        tokens = tokens.reshape(t, k, *tokens.shape[1:]).astype(np.float32).mean(1).astype(np.float16)  # (T, P, D)
    return tokens, times
