"""Shared test settings and fixtures: never touch the network, keep torch small and deterministic on 2 cores.

Fixtures (tiny, made by the tests, nothing fetched):
  tiny_videos      8 tiny synthetic videos (2-3 s, 32 px, 8 fps) from the project's own generator (a data root)
  tiny_cache       (data root, cache dir): a synthetic-layout root (labels.csv, meta.json) and a cache of
                   class-dependent random tokens, without any video; `make_tiny_cache(base, ...)` makes variants
  extract_cli      extract_cli(root, cache, *extra) -> argv of `python -m extract` at tiny sizes
  train_cli        train_cli(root, cache, runs, *extra) -> argv of `python -m heads train` for a tiny head
Slow obvious references the fast paths are checked against live in tests/references.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TRAIN_ARGS = ["--d-model", "16", "--n-layers", "2", "--d-state", "8", "--batch", "4", "--workers", "0",
                   "--clip", "subset:4", "--log-every", "1"]


def _make_tiny_cache(base: Path, classes=3, per_split=(6, 2, 3), P=5, D=8, encoder="vit-tiny-random", seed=0,
              skip=(), nan=False, tag_segments=12) -> tuple[Path, Path]:
    """A synthetic-layout data root (labels.csv, meta.json) and a cache of class-dependent random tokens."""
    root = base / "raw"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = [(f"{split}{i:03d}", split, i % classes)
            for split, n in zip(("train", "val", "test"), per_split) for i in range(n * classes)]
    (root / "labels.csv").write_text("video_id,split,label\n" + "".join(f"{v},{s},{y}\n" for v, s, y in rows))
    orders = [[f"s{c}", f"s{(c + 1) % classes}"] for c in range(classes)]
    (root / "meta.json").write_text(json.dumps({"class_orders": orders}))
    attrs = dict(encoder=encoder, encoder_hash=f"hash-{encoder}", image_size=32, patch_size=16, hidden_size=D,
                 grid=[2, 2], segments=tag_segments, frames_per_segment=1)
    from data.store import ShardWriter, make_tag

    with ShardWriter(base / "cache" / "synthetic" / make_tag(encoder, segments=tag_segments), attrs,
                     max_videos=16) as writer:
        for video_id, _, label in rows:
            if video_id in skip:
                continue
            T = int(rng.integers(6, 15))
            tokens = rng.normal(size=(T, P, D)) + 2.0 * np.eye(D)[label % D][None, None, :]
            if nan:
                tokens[:] = np.nan
            writer.add(video_id, tokens.astype(np.float16), np.arange(T, dtype=np.float64), float(T), f"{video_id}.mp4")
    return root, base / "cache"


@pytest.fixture(scope="session")
def make_tiny_cache():
    return _make_tiny_cache


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> tuple[Path, Path]:
    return _make_tiny_cache(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def train_cli():
    def argv(root, cache, runs, *extra) -> list[str]:
        return ["train", "--dataset", "synthetic", "--data-root", str(root), "--cache-dir", str(cache),
                "--runs-dir", str(runs), *TINY_TRAIN_ARGS, *extra]

    return argv


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory) -> Path:
    from data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), seed=0, workers=1,
                    per_class={"train": 2, "val": 1, "test": 1}, classes=2, seconds=(2.0, 3.0), size=32)


@pytest.fixture(scope="session")
def extract_cli():
    def argv(root, cache, *extra) -> list[str]:
        return ["--dataset", "synthetic", "--data-root", str(root), "--cache-dir", str(cache), "--encoder",
                "vit-tiny-random", "--workers", "0", "--batch", "8", "--no-progress", *extra]

    return argv
