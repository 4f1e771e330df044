"""Breakfast Actions (Kuehne et al., CVPR 2014) read from the authors' video tree: 10 activities, 52 participants.

Layout (the 15 fps QVGA release, `BreakfastII_15fps_qvga_sync/`): `<participant>/<camera>/<file>.avi`, e.g.
`P03/cam01/P03_cereals.avi`, `P03/webcam01/P03_cereals.avi`, `P03/stereo/P03_cereals_ch0.avi`. The tree itself is the
annotation: the activity is in the file name. Video id = the path's parts joined by `-` without the extension
(`P03-cam01-P03_cereals`). The stereo camera ships two channels of the same recording; like the standard 1,712-video
list (one `stereo01` view per recording) we keep one of them: `_ch0`, or `_ch1` when `_ch0` is absent.

Splits: by default the one ViS4mer used (participants P03-P46 train, P47-P54 test: 1,357 / 355 videos);
`task="s1".."s4"` selects the four standard splits whose test participants are P03-P15, P16-P28, P29-P41, P42-P54.
Video files that do not parse as `P<nn>_<activity>[_ch<k>].avi` (another name, another container) are skipped and
listed in `.skipped`; the second stereo channels left out are listed in `.left_out`.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from data.datasets.base import DatasetError, Record, VideoDataset, is_video_name

ACTIVITIES = (
    "cereals", "coffee", "friedegg", "juice", "milk", "pancake", "salat", "sandwich", "scrambledegg", "tea",
)
# test participants (inclusive ranges of the participant number); the rest of P03-P54 train
TEST_PARTICIPANTS = {None: (47, 54), "s1": (3, 15), "s2": (16, 28), "s3": (29, 41), "s4": (42, 54)}
_PARTICIPANT = re.compile(r"^P(\d{2})$")
_FILE = re.compile(r"^P(\d{2})_([a-z]+)(?:_ch(\d))?$")


class Breakfast(VideoDataset):
    name = "breakfast"
    splits = ("train", "test")
    tasks = ("s1", "s2", "s3", "s4")
    default_sampling = {"segments": 128}
    paper_features = "clips"
    clip = ("subset", 64)
    layout = "<participant>/<camera>/<file>.avi, e.g. P03/cam01/P03_cereals.avi, P03/stereo/P03_cereals_ch0.avi"
    source = "https://serre-lab.clps.brown.edu/resource/breakfast-actions-dataset/ (BreakfastII_15fps_qvga_sync)"
    skipped_kind = "files that are not activity videos"

    num_classes = len(ACTIVITIES)

    @property
    def class_names(self) -> list[str]:
        return list(ACTIVITIES)

    def _check_root(self) -> None:
        super()._check_root()
        if not self._participant_dirs(self.root):
            # accept the archive's top folder one level up: <root>/BreakfastII_15fps_qvga_sync/P03/...
            inner = [d for d in sorted(self.root.iterdir()) if d.is_dir() and self._participant_dirs(d)]
            if len(inner) != 1:
                raise self.layout_error(f"no participant folders P03..P54 in {self.root.resolve()}")
            self.root = inner[0]
        if not self._videos:
            raise self.layout_error(f"no <participant>/<camera>/P<nn>_<activity>.avi files in {self.root.resolve()}")

    @staticmethod
    def _participant_dirs(folder: Path) -> list[Path]:
        return [d for d in sorted(folder.iterdir()) if d.is_dir() and _PARTICIPANT.match(d.name)]

    @cached_property
    def _scan(self) -> tuple[dict[str, tuple[Path, int, int]], list[str], list[str]]:
        """id -> (path, participant number, activity index); the skipped video files; the second channels left out."""
        videos: dict[str, tuple[Path, int, int]] = {}
        skipped: list[str] = []
        second_channels: list[str] = []
        for participant in self._participant_dirs(self.root):
            for camera in sorted(d for d in participant.iterdir() if d.is_dir()):
                files = sorted(p for p in camera.iterdir() if is_video_name(p))
                stems = {p.stem for p in files if p.suffix.lower() == ".avi"}
                for path in files:
                    match = _FILE.match(path.stem)
                    owner = match and int(match.group(1)) == int(participant.name[1:])
                    if path.suffix.lower() != ".avi" or not owner or match.group(2) not in ACTIVITIES:
                        skipped.append(str(path.relative_to(self.root)))
                        continue
                    number, activity, channel = int(match.group(1)), match.group(2), match.group(3)
                    if channel is not None and channel != "0":
                        # a second stereo channel duplicates the recording: keep it only when _ch0 is absent
                        if f"P{match.group(1)}_{activity}_ch0" in stems:
                            second_channels.append(str(path.relative_to(self.root)))
                            continue
                    video_id = "-".join((participant.name, camera.name, path.stem))
                    videos[video_id] = (path, number, ACTIVITIES.index(activity))
        return videos, skipped, second_channels

    @property
    def _videos(self) -> dict[str, tuple[Path, int, int]]:
        return self._scan[0]

    @property
    def skipped(self) -> list[str]:
        """Video files under the root that are not a recognised activity video (relative paths)."""
        return list(self._scan[1])

    @property
    def left_out(self) -> dict[str, list[str]]:
        """Activity videos not listed, by reason: the second stereo channels of recordings whose _ch0 is listed."""
        return {"second stereo channels left out (the same recordings as _ch0)": list(self._scan[2])}

    def _load(self) -> dict[str, list[Record]]:
        low, high = TEST_PARTICIPANTS[self.task]
        out: dict[str, list[Record]] = {"train": [], "test": []}
        for video_id, (_, number, label) in self._videos.items():
            out["test" if low <= number <= high else "train"].append(Record(video_id, label))
        return out

    def video_path(self, video_id: str) -> Path:
        if video_id in self._videos:
            return self._videos[video_id][0]
        parts = video_id.split("-")
        if len(parts) != 3:
            raise DatasetError(f"not a Breakfast video id: {video_id!r} (expected e.g. P03-cam01-P03_cereals)")
        return self.root.joinpath(*parts[:2], parts[2] + ".avi")
