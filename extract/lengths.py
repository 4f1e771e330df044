"""How long a video is, from what its container states rather than from decoding it: the frame count of an AVI
header, the play duration of an ASF (wmv) header, and the span a stream's packets cover (`PacketSpan`). `extract.video`
compares these with what decoding reaches to tell a complete file from a truncated one."""

from __future__ import annotations

from pathlib import Path


def counts_frames(container) -> bool:
    """Containers whose header frame count is the length of the video (AVI: its time base is one frame)."""
    return "avi" in container.format.name.split(",")


_ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")  # GUID 75B22630-668E-11CF-A6D9-00AA0062CE6C
_ASF_FILE_PROPERTIES = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")  # GUID 8CABDCA1-A947-11CF-8EE4-00C00C205365


def asf_play_duration(path: Path) -> float | None:
    """Seconds of presentation an ASF (wmv) file's File Properties Object states: play duration (100 ns units) less
    the preroll (ms); None when absent, or when the broadcast flag says the values are not set."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return None
    if head[:16] != _ASF_HEADER or len(head) < 30:
        return None
    at, end = 30, min(len(head), int.from_bytes(head[16:24], "little"))  # after the header object's own fields
    while at + 24 <= end:
        guid, size = head[at : at + 16], int.from_bytes(head[at + 16 : at + 24], "little")
        if guid == _ASF_FILE_PROPERTIES and at + 104 <= len(head):
            body = head[at + 24 : at + 104]
            play = int.from_bytes(body[40:48], "little")  # after file id (16), size, date, packet count (8 each)
            preroll = int.from_bytes(body[56:64], "little")
            broadcast = int.from_bytes(body[64:68], "little") & 1
            return None if broadcast or not play else play / 1e7 - preroll / 1e3
        if size < 24:
            return None
        at += size
    return None


class PacketSpan:
    """The time span a stream's packets cover, in seconds of the stream's clock (they arrive in decode order).

    ``end`` is the largest pts + duration (a packet without a duration lasts 1 / rate), ``last_start`` the largest
    pts; a stream without timestamps (raw elementary streams) spans ``count / rate``.
    """

    def __init__(self, stream, rate: float):
        self.tb = float(stream.time_base) if stream.time_base else 0.0
        self.rate = float(rate)
        self.first: float | None = None
        self.last_start: float | None = None
        self.end: float | None = None
        self.count = 0

    def add(self, packet) -> None:
        if packet.size == 0:  # the flush packet at the end of the stream
            return
        self.count += 1
        if packet.pts is None or not self.tb:
            return
        t0 = packet.pts * self.tb
        t1 = t0 + (packet.duration * self.tb if packet.duration else 1.0 / self.rate)
        self.first = t0 if self.first is None else min(self.first, t0)
        self.last_start = t0 if self.last_start is None else max(self.last_start, t0)
        self.end = t1 if self.end is None else max(self.end, t1)

    def length(self) -> float:
        """Seconds from the first packet to the end of the last one."""
        return self.end - self.first if self.end is not None else self.count / self.rate

    def stop(self, start: float) -> float:
        """Where the packets end, in seconds after the stream start ``start``."""
        return self.end - start if self.end is not None else self.count / self.rate
