"""A video's display matrix (rotation and mirroring the player applies to the coded picture), as FFmpeg defines it
(libavutil/display.h), and its application to decoded frames: what `extract.video` uses so that the encoder sees
the picture every player shows."""

from __future__ import annotations

import av
import numpy as np

IDENTITY_MATRIX = (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)


def display_matrix(frame) -> tuple[int, ...]:
    """The frame's display matrix (FFmpeg's AV_FRAME_DATA_DISPLAYMATRIX: 9 int32, a b u / c d v / x y w with a..d
    and x, y in 16.16 fixed point), or the identity when the file has none. FFmpeg's demuxers read it from the
    container (mp4/mov ``tkhd``, Matroska ``Projection``, ...) and its decoders attach it to every frame."""
    side = frame.side_data
    try:
        data = side[av.sidedata.sidedata.Type.DISPLAYMATRIX]
    except KeyError:
        return IDENTITY_MATRIX
    values = np.frombuffer(bytes(data), dtype=np.int32)
    return tuple(int(v) for v in values[:9]) if values.size >= 9 else IDENTITY_MATRIX


def orientation(matrix) -> tuple[bool, bool, bool]:
    """How the display matrix turns the coded picture into the displayed one: (transpose, mirror left-right,
    mirror top-bottom), applied in that order to an (H, W, C) picture.

    FFmpeg's convention (libavutil/display.h): a coded pixel (x, y) is shown at (x', y') = (a x + c y, b x + d y)
    (plus a translation that keeps the picture in view). The eight matrices whose 2x2 part is a signed
    permutation (every rotation by a multiple of 90 degrees, with or without a mirror) are applied exactly; any
    other matrix is taken as the nearest of the eight (FFmpeg's own CLI rotates by the exact angle and fills the
    corners, which no encoder was trained on). ``ffmpeg``'s autorotation inserts the same operations as its
    transpose/hflip/vflip filters.
    """
    a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
    if abs(a) + abs(d) >= abs(b) + abs(c):  # x' ~ sign(a) x, y' ~ sign(d) y
        return False, a < 0, d < 0
    return True, c < 0, b < 0  # x' ~ sign(c) y, y' ~ sign(b) x: the picture is transposed


def apply_orientation(rgb: np.ndarray, turn: tuple[bool, bool, bool]) -> np.ndarray:
    """(H, W, C) coded picture -> the displayed picture ((W, H, C) when transposed), as a view (no copy)."""
    transpose, mirror_lr, mirror_tb = turn
    if transpose:
        rgb = rgb.transpose(1, 0, 2)  # (W, H, C)
    if mirror_lr:
        rgb = rgb[:, ::-1]
    if mirror_tb:
        rgb = rgb[::-1]
    return rgb
