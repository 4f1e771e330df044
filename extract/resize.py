"""Stage 1, input geometry: how a decoded frame becomes an encoder's input (resize, then an optional centre crop).

Mirrors the geometry of transformers' image processors (``get_resize_output_image_size`` with
``default_to_square=False``, ``center_crop``), so FFmpeg's swscale (``extract/video.py``, ``SampledVideo._rgb``) can
do the processor's work while decoding; ``extract.encoder.input_plan`` reads the plan from a checkpoint's processor.
Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_INTERPOLATIONS = ("POINT", "FAST_BILINEAR", "BILINEAR", "BICUBIC", "AREA", "LANCZOS")


@dataclass(frozen=True)
class Resize:
    """How a decoded frame becomes the encoder's input: resize, then an optional centre crop, in pixels.

    Exactly one of ``size`` (an exact (height, width)) or ``shortest_edge`` (the short side becomes that many pixels,
    the long side ``int(shortest_edge * long / short)``, as transformers' ``get_resize_output_image_size`` with
    ``default_to_square=False``). ``crop`` (height, width) is then cut from the centre (top = (h - ch) // 2, as
    transformers' ``center_crop``); it is required with ``shortest_edge``, so every frame ends at one size.
    ``interpolation`` names the swscale filter (BILINEAR, BICUBIC, ...).
    """

    size: tuple[int, int] | None = None
    shortest_edge: int | None = None
    crop: tuple[int, int] | None = None
    interpolation: str = "BILINEAR"

    def __post_init__(self):
        if (self.size is None) == (self.shortest_edge is None):
            raise ValueError(f"Expected exactly one of size or shortest_edge, got {self.size}, {self.shortest_edge}")
        if self.shortest_edge is not None and self.crop is None:
            raise ValueError(f"Expected a crop with shortest_edge={self.shortest_edge} (the output size would vary)")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"Expected an interpolation in {_INTERPOLATIONS}, got {self.interpolation!r}")
        sides = [*(self.size or ()), *(self.crop or ()), *([self.shortest_edge] if self.shortest_edge else [])]
        if any(int(v) < 1 for v in sides):
            raise ValueError(f"Expected positive sizes, got {self}")

    @classmethod
    def exact(cls, size: int | tuple[int, int], interpolation: str = "BILINEAR") -> Resize:
        """Resize straight to ``size`` (an int for a square), no crop."""
        return cls(size=(size, size) if isinstance(size, int) else tuple(size), interpolation=interpolation)

    @property
    def output(self) -> tuple[int, int]:
        """(height, width) of every frame this plan produces."""
        return tuple(self.crop) if self.crop is not None else tuple(self.size)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step, for a source frame of ``height`` x ``width``."""
        if self.size is not None:
            return tuple(self.size)
        s = int(self.shortest_edge)
        if width <= height:
            return int(s * height / width), s
        return s, int(s * width / height)

    def crop_array(self, rgb: np.ndarray) -> np.ndarray:
        """The centre crop of a resized (h, w, 3) frame (a view), or the frame itself without a crop."""
        if self.crop is None:
            return rgb
        h, w = rgb.shape[:2]
        ch, cw = self.crop
        if ch > h or cw > w:
            raise ValueError(f"Expected a crop {ch}x{cw} inside the resized frame {h}x{w}")
        top, left = (h - ch) // 2, (w - cw) // 2
        return rgb[top : top + ch, left : left + cw]
