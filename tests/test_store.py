"""Tests of the HDF5 feature cache (data/store/): sealing, provenance, odd ids, segment reads, workers."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from data.store import FeatureStore, MissingVideoError, ShardWriter, StoreError, make_tag, partial_shards
from data.store.layout import append_failure, escape_id, find_caches, read_failures, unescape_id

P, D = 5, 8  # tiny token grid: 1 CLS + 2x2 patches, 8 channels
ATTRS = {
    "encoder": "vit-tiny-random",
    "encoder_hash": "abc123",
    "image_size": 32,
    "patch_size": 16,
    "hidden_size": D,
    "grid": [2, 2],
    "pool": None,
    "segments": 16,
    "frames_per_segment": 1,
}
ODD_IDS = ["a/b/c", "with space", "ünïcødé-日本語-🎬", "100%", "%2F", ".", "..", "a.b.mp4", "-_-", "x" * 200]
REPO = Path(__file__).resolve().parents[1]


def make_tokens(seed: int, t: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, P, D)).astype(np.float32)  # (T, P, D)


def write_videos(directory, videos: dict[str, np.ndarray], attrs=ATTRS, **kwargs) -> list[Path]:
    with ShardWriter(directory, attrs, **kwargs) as writer:
        for video_id, tokens in videos.items():
            t = tokens.shape[0]
            writer.add(video_id, tokens, timestamps=np.arange(t) * 0.5, duration=t * 0.5,
                       source=f"{video_id}.mp4")
    return writer.sealed


# ----------------------------------------------------------------------------------------------------------
# ids, tags, caches


@pytest.mark.parametrize("video_id", ODD_IDS)
def test_escape_is_reversible_and_hdf5_safe(video_id):
    name = escape_id(video_id)
    assert unescape_id(name) == video_id
    assert "/" not in name and "." not in name and name.isascii()


def test_escape_rejects_empty_id():
    with pytest.raises(StoreError):
        escape_id("")


def test_make_tag():
    assert make_tag("google/vit-large-patch16-224-in21k", fps=1) == "vit-large-patch16-224-in21k_fps1"
    assert make_tag("vit-tiny-random", segments=128) == "vit-tiny-random_seg128"
    tag = make_tag("/models/my vit/", fps=0.5, frames_per_segment=4, pool="cls")
    assert tag == "my-vit_fps0.5_fr4_pool-cls"
    assert make_tag("vit-tiny-random", segments=64, pool="none") == "vit-tiny-random_seg64"
    with pytest.raises(ValueError, match="exactly one"):
        make_tag("vit", fps=1, segments=8)
    with pytest.raises(ValueError, match="exactly one"):
        make_tag("vit")


def test_find_caches_newest_first(tmp_path):
    old, new = tmp_path / "synthetic" / "old_seg16", tmp_path / "synthetic" / "new_seg16"
    write_videos(old, {"a": make_tokens(0, 2)})
    write_videos(new, {"b": make_tokens(1, 2)})
    (tmp_path / "synthetic" / "empty_seg16").mkdir()
    partial_only = tmp_path / "synthetic" / "partial_seg16"
    partial_only.mkdir()
    (partial_only / "shard-r00-00000.h5.partial").write_bytes(b"")
    now = time.time()
    for shard in old.glob("*.h5"):
        os.utime(shard, (now - 100, now - 100))
    assert find_caches(tmp_path, "synthetic") == [new, old]
    assert find_caches(tmp_path, "breakfast") == []


# ----------------------------------------------------------------------------------------------------------
# write + read round trip


def test_round_trip_across_several_shards(tmp_path):
    videos = {f"video{i:02d}": make_tokens(i, 3 + i % 4) for i in range(12)}
    sealed = write_videos(tmp_path, videos, max_videos=5)
    assert [p.name for p in sealed] == ["shard-r00-00000.h5", "shard-r00-00001.h5", "shard-r00-00002.h5"]
    assert not list(tmp_path.glob("*.partial"))

    store = FeatureStore(tmp_path)
    assert store.ids() == sorted(videos) and len(store) == 12
    assert "video03" in store and "nope" not in store
    for video_id, tokens in videos.items():
        out = store.read(video_id)
        assert out.dtype == np.float16 and out.shape == tokens.shape
        np.testing.assert_array_equal(out, tokens.astype(np.float16))
        assert store.num_segments(video_id) == tokens.shape[0]
        np.testing.assert_allclose(store.timestamps(video_id), np.arange(tokens.shape[0]) * 0.5)
    attrs = store.video_attrs("video05")
    assert attrs["video_id"] == "video05" and attrs["source"] == "video05.mp4" and attrs["duration"] == 2.0
    assert attrs["shard"] == "shard-r00-00001.h5" and attrs["num_segments"] == 4
    meta = store.meta
    assert meta["grid"] == [2, 2] and isinstance(meta["grid"], list)
    assert meta["encoder"] == "vit-tiny-random" and meta["hidden_size"] == D and meta["segments"] == 16
    assert meta["schema"] == 1 and meta["dtype"] == "float16" and "pool" not in meta and "created" not in meta
    with h5py.File(sealed[0], "r") as handle:  # the on-disk schema of docs/design.md
        tokens = handle["videos/video00/tokens"]
        assert tokens.chunks == (1, P, D) and tokens.dtype == np.float16 and tokens.compression is None
        assert handle["videos/video00"].attrs["video_id"] == "video00"
        assert {"created", "version", "schema", "dtype"} <= set(handle.attrs)


def test_max_bytes_seals_before_overflow(tmp_path):
    one = 4 * P * D * 2  # bytes of a (4, P, D) float16 video
    videos = {f"v{i}": make_tokens(i, 4) for i in range(5)}
    videos["big"] = make_tokens(9, 12)  # 3x the budget: gets a shard of its own
    sealed = write_videos(tmp_path, videos, max_bytes=int(2.5 * one))
    counts = []
    for shard in sealed:
        with h5py.File(shard, "r") as handle:
            counts.append(sorted(handle["videos"]))
    assert counts == [["v0", "v1"], ["v2", "v3"], ["v4"], ["big"]]


def test_shard_index_continues_and_ranks_do_not_collide(tmp_path):
    write_videos(tmp_path, {"a": make_tokens(0, 2)})
    (tmp_path / "shard-r00-00001.h5.partial").write_bytes(b"left by a killed writer")
    second = write_videos(tmp_path, {"b": make_tokens(1, 2)})
    other_rank = write_videos(tmp_path, {"c": make_tokens(2, 2)}, rank=1)
    assert second[0].name == "shard-r00-00002.h5" and other_rank[0].name == "shard-r01-00000.h5"
    assert FeatureStore(tmp_path).ids() == ["a", "b", "c"]


def test_empty_writer_creates_nothing(tmp_path):
    assert ShardWriter(tmp_path, ATTRS).close() == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("video_id", ODD_IDS)
def test_odd_ids_round_trip(tmp_path, video_id):
    tokens = make_tokens(3, 3)
    write_videos(tmp_path, {video_id: tokens, "plain": tokens[:1]})
    store = FeatureStore(tmp_path)
    assert video_id in store and store.ids() == sorted([video_id, "plain"])
    np.testing.assert_array_equal(store.read(video_id), tokens.astype(np.float16))
    assert store.video_attrs(video_id)["video_id"] == video_id


# ----------------------------------------------------------------------------------------------------------
# killed writers, bad input, provenance


def test_partial_of_a_killed_writer_is_ignored(tmp_path):
    writer = ShardWriter(tmp_path, ATTRS, max_videos=2)
    for i in range(3):
        writer.add(f"v{i}", make_tokens(i, 2), np.arange(2.0), 2.0, "x.mp4")
    # never closed: v2 sits in an open .partial, as when the process dies here
    store = FeatureStore(tmp_path)
    assert store.ids() == ["v0", "v1"] and "v2" not in store
    assert [p.name for p in partial_shards(store.path)] == ["shard-r00-00001.h5.partial"]


def test_partial_of_a_sigkilled_process_is_ignored(tmp_path):
    script = (
        "import os, signal, numpy as np\n"
        "from data.store import ShardWriter\n"
        f"w = ShardWriter({str(tmp_path)!r}, {{'encoder': 'e', 'segments': 4}}, max_videos=3)\n"
        "for i in range(5):\n"
        "    w.add(f'v{i}', np.ones((2, 3, 4)), np.arange(2.0), 2.0, 's')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    store = FeatureStore(tmp_path)
    assert store.ids() == ["v0", "v1", "v2"]  # v3, v4 were in the partial: not done, a resume redoes them
    assert [p.name for p in partial_shards(store.path)] == ["shard-r00-00001.h5.partial"]
    np.testing.assert_array_equal(store.read("v2"), np.ones((2, 3, 4), np.float16))


def test_context_manager_seals_complete_videos_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, ATTRS) as writer:
            writer.add("done", make_tokens(0, 2), np.arange(2.0), 2.0, "s")
            raise RuntimeError("decoder crashed")
    assert FeatureStore(tmp_path).ids() == ["done"]


@pytest.mark.parametrize(
    "tokens, timestamps, match",
    [
        (np.zeros((2, P, D + 1)), np.arange(2.0), "hidden_size"),
        (np.zeros((2, P + 1, D)), np.arange(2.0), "grid"),
        (np.zeros((0, P, D)), np.zeros(0), "T, P, D > 0"),
        (np.zeros((P, D)), np.arange(2.0), r"\(T, P, D\)"),
        (np.zeros((3, P, D)), np.arange(2.0), "timestamps"),
    ],
)
def test_writer_rejects_bad_videos(tmp_path, tokens, timestamps, match):
    with ShardWriter(tmp_path, ATTRS) as writer:
        with pytest.raises(StoreError, match=match):
            writer.add("v", tokens, timestamps, 1.0, "s")


def test_writer_warns_about_non_finite_tokens(tmp_path):
    tokens = make_tokens(0, 2)
    tokens[1, 0, 0] = 1e6  # overflows float16
    with ShardWriter(tmp_path, ATTRS) as writer:
        with pytest.warns(RuntimeWarning, match="'v' contain NaN or inf"):
            writer.add("v", tokens, np.arange(2.0), 1.0, "s")
    assert np.isinf(FeatureStore(tmp_path).read("v", [1])[0, 0, 0])


def test_failed_add_is_undone_and_the_rest_sealed(tmp_path, monkeypatch):
    original = h5py.Group.create_dataset

    def fails(self, name, *args, **kwargs):
        if self.attrs.get("video_id") == "bad":
            raise ValueError("simulated failure of one video")  # a full disk stops the writer: test_store_faults
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fails)
    with ShardWriter(tmp_path, ATTRS) as writer:
        writer.add("good", make_tokens(0, 2), np.arange(2.0), 1.0, "s")
        with pytest.raises(ValueError):
            writer.add("bad", make_tokens(1, 2), np.arange(2.0), 1.0, "s")
        writer.add("after", make_tokens(2, 2), np.arange(2.0), 1.0, "s")
    store = FeatureStore(tmp_path)
    assert store.ids() == ["after", "good"] and not partial_shards(store.path)


def test_writer_rejects_duplicates_and_changing_dims(tmp_path):
    attrs = {"encoder": "e", "segments": 4}  # no dims declared: the first video fixes (P, D)
    with ShardWriter(tmp_path, attrs) as writer:
        writer.add("v", np.zeros((2, 3, 4)), np.arange(2.0), 1.0, "s")
        with pytest.raises(StoreError, match="already written"):
            writer.add("v", np.zeros((2, 3, 4)), np.arange(2.0), 1.0, "s")
        with pytest.raises(StoreError, match=r"\(P, D\)"):
            writer.add("w", np.zeros((2, 3, 5)), np.arange(2.0), 1.0, "s")
    assert FeatureStore(tmp_path).ids() == ["v"]


def test_mismatched_provenance_is_refused(tmp_path):
    write_videos(tmp_path, {"a": make_tokens(0, 2)})
    write_videos(tmp_path, {"b": make_tokens(1, 2)}, attrs={**ATTRS, "encoder": "other-vit", "segments": 64},
                 rank=1)
    with pytest.raises(StoreError) as info:
        FeatureStore(tmp_path)
    message = str(info.value)
    for text in ("shard-r00-00000.h5", "shard-r01-00000.h5", "'vit-tiny-random'", "'other-vit'",
                 "segments=64"):
        assert text in message
    assert "encoder_hash" not in message  # only the keys that differ


def test_duplicate_id_across_shards_keeps_the_first(tmp_path):
    write_videos(tmp_path, {"x": make_tokens(0, 2)})
    write_videos(tmp_path, {"x": make_tokens(1, 2)}, rank=1)
    with pytest.warns(UserWarning, match="shard-r00-00000.h5"):
        store = FeatureStore(tmp_path)
    np.testing.assert_array_equal(store.read("x"), make_tokens(0, 2).astype(np.float16))


def test_missing_cache_and_missing_video(tmp_path):
    with pytest.raises(StoreError, match="make extract"):
        FeatureStore(tmp_path / "nope")
    empty = FeatureStore(tmp_path)
    assert len(empty) == 0 and empty.ids() == [] and empty.meta == {}
    write_videos(tmp_path, {"a": make_tokens(0, 2)})
    with pytest.raises(MissingVideoError) as info:
        FeatureStore(tmp_path).read("b")
    assert isinstance(info.value, KeyError) and isinstance(info.value, StoreError)
    assert str(info.value).startswith("Video 'b' is not in the cache")


# ----------------------------------------------------------------------------------------------------------
# segment selection


@pytest.fixture()
def long_video(tmp_path):
    tokens = make_tokens(7, 20).astype(np.float16)
    write_videos(tmp_path, {"long": tokens})
    return FeatureStore(tmp_path), tokens


@pytest.mark.parametrize(
    "segments",
    [
        slice(3, 9),
        slice(None, None, 3),
        slice(15, 2, -4),
        slice(18, 40),
        slice(5, 5),
        [12, 3, 3, 19, 0, 12],  # unsorted, with duplicates
        np.array([7]),
        np.array([-1, -20, 4]),
        [],
        np.arange(20) % 3 == 0,  # boolean mask
    ],
)
def test_segment_selection_returns_exactly_those_rows(long_video, segments):
    store, tokens = long_video
    out = store.read("long", segments)
    expected = tokens[segments if not isinstance(segments, list) else np.asarray(segments, dtype=np.int64)]
    assert out.dtype == np.float16 and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("segments", [[0, 20], [-21], 3, np.zeros((2, 2), dtype=int), [0.5]])
def test_bad_segment_selection_is_refused(long_video, segments):
    store, _ = long_video
    with pytest.raises(StoreError):
        store.read("long", segments)


def test_generic_path_matches_chunk_path(tmp_path):
    """A shard written with another chunking and gzip (not the fast raw-chunk path) reads the same rows."""
    tokens = make_tokens(5, 12).astype(np.float16)
    fast_dir, slow_dir = tmp_path / "fast", tmp_path / "slow"
    write_videos(fast_dir, {"v": tokens})
    slow_dir.mkdir()
    with h5py.File(slow_dir / "shard-r00-00000.h5", "w") as handle:
        handle.attrs.update({k: v for k, v in ATTRS.items() if v is not None})
        handle.attrs.update(schema=1, dtype="float16")
        group = handle.create_group("videos/v")
        group.attrs.update(video_id="v", timestamps=np.arange(12.0), duration=6.0, source="s")
        group.create_dataset("tokens", data=tokens.astype(">f4"), chunks=(4, P, D), compression="gzip")
    fast, slow = FeatureStore(fast_dir), FeatureStore(slow_dir)
    for segments in (None, slice(2, 9), [11, 0, 5, 6, 7, 5]):
        a, b = fast.read("v", segments), slow.read("v", segments)
        assert a.dtype == b.dtype == np.float16
        np.testing.assert_array_equal(a, b)


def test_pread_path_matches_hdf5_chunk_path(tmp_path, monkeypatch):
    """The raw-offset (preadv) path and the HDF5 read_direct_chunk path read identical rows of one shard."""
    videos = {f"v{i}": make_tokens(i, 9) for i in range(3)}
    write_videos(tmp_path, videos, max_videos=2)
    fast = FeatureStore(tmp_path)
    for video_id in videos:  # the layout (chunk offsets) of each video is found at its first read
        fast.read(video_id, [0])
    monkeypatch.setattr("data.store.reader._HAS_PREADV", False)
    slow = FeatureStore(tmp_path)
    for video_id, tokens in videos.items():
        for segments in (None, slice(1, 8), [8, 0, 4, 5, 6, 0], [3]):
            a, b = fast.read(video_id, segments), slow.read(video_id, segments)
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, tokens[[3]].astype(np.float16))
        assert fast._layouts[video_id][2] is not None and slow._layouts[video_id][2] is None


# ----------------------------------------------------------------------------------------------------------
# pickling into DataLoader workers


class _Windows:
    """A map-style dataset over a store, as the training datamodule uses it."""

    def __init__(self, store: FeatureStore, picks: list[tuple[str, list[int]]]):
        self.store, self.picks = store, picks

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, i):
        video_id, segments = self.picks[i]
        return self.store.read(video_id, segments), os.getpid()


def test_store_pickles_and_reopens(tmp_path):
    videos = {f"v{i}": make_tokens(i, 6) for i in range(4)}
    write_videos(tmp_path, videos, max_videos=2)
    store = FeatureStore(tmp_path)
    store.read("v0")  # open handles in this process first
    clone = pickle.loads(pickle.dumps(store))
    assert clone.ids() == store.ids() and clone.meta == store.meta
    np.testing.assert_array_equal(clone.read("v3", [5, 1]), videos["v3"][[5, 1]].astype(np.float16))


def test_two_worker_dataloader_reads_correct_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    videos = {f"v{i}": make_tokens(i, 10) for i in range(6)}
    write_videos(tmp_path, videos, max_videos=2)
    store = FeatureStore(tmp_path)
    store.read("v1", [0])  # the parent holds open HDF5 handles when the workers fork
    rng = np.random.default_rng(0)
    picks = [(f"v{i % 6}", sorted(rng.choice(10, 4, replace=False).tolist())) for i in range(12)]
    loader = torch.utils.data.DataLoader(_Windows(store, picks), batch_size=3, num_workers=2)
    batches, pids = [], set()
    for tokens, worker_pids in loader:
        assert tokens.shape == (3, 4, P, D) and tokens.dtype == torch.float16
        batches.append(tokens)
        pids.update(worker_pids.tolist())
    got = torch.cat(batches).numpy()
    expected = np.stack([videos[v][s].astype(np.float16) for v, s in picks])
    np.testing.assert_array_equal(got, expected)
    assert len(pids) == 2 and os.getpid() not in pids


# ----------------------------------------------------------------------------------------------------------
# failures.jsonl


def test_failures_append_and_read(tmp_path):
    directory = tmp_path / "cache" / "tag"
    assert read_failures(directory) == []
    append_failure(directory, "a/b", Path("/videos/a b.mp4"), ValueError("moov atom\nnot found"))
    append_failure(directory, "ünï", None, "decode error")
    records = read_failures(directory)
    assert [r["video_id"] for r in records] == ["a/b", "ünï"]
    assert records[0]["path"] == "/videos/a b.mp4"
    assert records[0]["error"] == "ValueError: moov atom not found"
    assert records[1]["path"] is None and records[1]["error"] == "decode error"
    with open(directory / "failures.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"video_id": "torn", "pa')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="unreadable line"):
        assert len(read_failures(directory)) == 2


def test_add_parts_streams_into_the_layout_add_writes(tmp_path):
    """A video written part by part reads back like one written at once, with the same raw-chunk layout."""
    tokens = make_tokens(5, 11)
    times = np.arange(11) * 0.5
    with ShardWriter(tmp_path / "once", ATTRS) as writer:
        writer.add("v", tokens, times, 5.5, "v.mp4")
    parts = ((tokens[a:a + 4], times[a:a + 4]) for a in range(0, 11, 4))  # 4 + 4 + 3 segments
    with ShardWriter(tmp_path / "parts", ATTRS) as writer:
        writer.add_parts("v", 11, parts, 5.5, "v.mp4")
    once, streamed = FeatureStore(tmp_path / "once"), FeatureStore(tmp_path / "parts")
    np.testing.assert_array_equal(streamed.read("v"), once.read("v"))
    np.testing.assert_array_equal(streamed.timestamps("v"), times)
    assert streamed._layout("v")[2] is not None  # raw chunks: read with preadv, like add's
    np.testing.assert_array_equal(streamed.read("v", [9, 2, 2]), once.read("v", [9, 2, 2]))


def test_add_parts_undoes_a_video_whose_parts_fail(tmp_path):
    def broken():
        yield make_tokens(0, 3), np.arange(3.0)
        raise RuntimeError("the decoder died")

    with ShardWriter(tmp_path, ATTRS) as writer:
        writer.add("good", make_tokens(1, 2), np.arange(2.0), 1.0, "s")
        with pytest.raises(RuntimeError, match="decoder died"):
            writer.add_parts("bad", 6, broken(), 3.0, "s")
        with pytest.raises(StoreError, match="Expected 6 segments for 'short', got 3"):
            writer.add_parts("short", 6, iter([(make_tokens(2, 3), np.arange(3.0))]), 3.0, "s")
        with pytest.raises(StoreError, match="got more"):
            writer.add_parts("long", 2, iter([(make_tokens(2, 3), np.arange(3.0))]), 3.0, "s")
        writer.add("after", make_tokens(3, 2), np.arange(2.0), 1.0, "s")
    store = FeatureStore(tmp_path)
    assert store.ids() == ["after", "good"] and not partial_shards(tmp_path)
