"""Issue 15, points 5 and 6: several writers in one cache folder, and a full disk.

Two writers (two runs, or two nodes on a shared file system) must never remove, reuse or rename each other's files;
a `.partial` is removed only when its writer is provably gone. A full disk stops the writer with one DiskFullError
(and extraction with one `error:` line), keeps every sealed shard, removes the open `.partial`, and never ends in a
traceback or a crash. The small disk is a real 600 KiB tmpfs where this process may mount one, and otherwise an
LD_PRELOAD shim that makes the OS refuse writes under a folder past a byte budget (what HDF5 meets on a full disk).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.store import DiskFullError, FeatureStore, ShardWriter, StoreError, partial_shards, remove_dead_partials

REPO = Path(__file__).resolve().parents[1]
ATTRS = {"encoder": "e", "encoder_hash": "h", "hidden_size": 8, "segments": 4, "frames_per_segment": 1}


def tokens(seed: int, t: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, 3, 8)).astype(np.float16)  # (T, P, D)


WRITER = """
import sys, numpy as np
from data.store import ShardWriter
attrs = {attrs!r}
writer = ShardWriter(sys.argv[1], attrs, max_videos=10)
for i, video_id in enumerate(sys.argv[2:]):
    shape = {shape!r}  # (T, P, D)
    writer.add(video_id, np.random.default_rng(int(video_id[1:])).standard_normal(shape).astype(np.float16),
               np.arange(float(shape[0])), 2.0, "x")
    print("added", video_id, flush=True)
    if sys.stdin.readline().strip() == "die":
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
writer.close()
print("sealed", flush=True)
"""


def start_writer(directory: Path, *ids: str) -> subprocess.Popen:
    """Another process writing `ids` into `directory`; after each video it waits for a line ("die": kill -9)."""
    code = WRITER.format(attrs=ATTRS, shape=(4, 3, 8))
    return subprocess.Popen([sys.executable, "-c", code, str(directory), *ids], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def step(proc: subprocess.Popen, line: str = "go") -> None:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def expect(proc: subprocess.Popen, words: str) -> None:
    out = proc.stdout.readline()
    assert out.startswith(words), (out, proc.stderr.read() if proc.poll() is not None else "")


# ----------------------------------------------------------------------------- 5. several writers
def test_two_writer_processes_keep_their_own_files(tmp_path):
    mine = ShardWriter(tmp_path, ATTRS, max_videos=2)  # made first: it would pick index 0 too
    other = start_writer(tmp_path, "a1", "a2")
    try:
        expect(other, "added a1")  # the other process holds an open .partial
        partial = next(tmp_path.glob("*.partial"))
        inode = partial.stat().st_ino
        removed, kept = remove_dead_partials(tmp_path)  # what a second run does first
        assert removed == [] and kept == [partial]
        for i in (1, 2, 3):
            mine.add(f"b{i}", tokens(100 + i), np.arange(4.0), 2.0, "x")
        sealed = mine.close()
        assert partial.exists() and partial.stat().st_ino == inode  # neither removed, reused nor renamed
        assert partial.name[: -len(".partial")] not in [p.name for p in sealed]
        step(other)
        expect(other, "added a2")
        step(other)
        expect(other, "sealed")
        assert other.wait(timeout=60) == 0, other.stderr.read()
    finally:
        other.kill()
    store = FeatureStore(tmp_path)
    assert store.ids() == ["a1", "a2", "b1", "b2", "b3"] and not partial_shards(store.path)
    for video_id in store.ids():
        np.testing.assert_array_equal(store.read(video_id), tokens(int(video_id[1:]) + 100 * (video_id[0] == "b")))


def test_the_partial_of_a_killed_writer_is_removed(tmp_path):
    killed = start_writer(tmp_path, "a1", "a2")
    expect(killed, "added a1")
    step(killed, "die")
    assert killed.wait(timeout=60) == -signal.SIGKILL
    old = tmp_path / "shard-r00-00007.h5.partial"
    old.write_bytes(b"left by a version without locks")
    left = sorted(tmp_path.glob("*.partial"))
    assert len(left) == 2
    removed, kept = remove_dead_partials(tmp_path)
    assert removed == left and kept == [] and not list(tmp_path.glob("*.partial"))


def test_sealing_never_renames_a_file_this_writer_did_not_write(tmp_path):
    writer = ShardWriter(tmp_path, ATTRS)
    writer.add("v1", tokens(1), np.arange(4.0), 2.0, "x")
    partial = next(tmp_path.glob("*.partial"))
    partial.unlink()  # someone removed it, and another file took its name
    partial.write_bytes(b"another writer's file")
    with pytest.raises(StoreError, match="no longer the file this writer wrote"):
        writer.close()
    assert partial.read_bytes() == b"another writer's file" and not list(tmp_path.glob("*.h5"))

    writer = ShardWriter(tmp_path, ATTRS)
    writer.add("v2", tokens(2), np.arange(4.0), 2.0, "x")
    ours = sorted(tmp_path.glob("*.partial"), key=lambda p: p.stat().st_mtime)[-1]
    final = ours.with_name(ours.name[: -len(".partial")])
    final.write_bytes(b"a sealed shard")  # cannot happen between cooperating writers; must still never be lost
    with pytest.raises(StoreError, match="already exists"):
        writer.close()
    assert final.read_bytes() == b"a sealed shard" and ours.exists()


# ----------------------------------------------------------------------------- 6. a full disk
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
/* Writes to files under $SMALL_DISK_DIR fail with ENOSPC once $SMALL_DISK_BYTES bytes were written there. */
static long long budget = -1, used = 0;
static const char *dir = NULL;
static int room(int fd, size_t count) {
    char link[64], path[4096];
    if (dir == NULL) {
        const char *b = getenv("SMALL_DISK_BYTES");
        dir = getenv("SMALL_DISK_DIR");
        budget = b ? atoll(b) : -1;
        if (dir == NULL) dir = "";
    }
    if (!*dir) return 1;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 1;
    path[n] = 0;
    if (strncmp(path, dir, strlen(dir)) != 0) return 1;
    if (used + (long long)count > budget) { errno = ENOSPC; return 0; }
    used += (long long)count;
    return 1;
}
#define WRAP(name, sig, args) ssize_t name sig { static ssize_t (*real) sig = NULL; \
    if (!real) real = dlsym(RTLD_NEXT, #name); if (!room(fd, count)) return -1; return real args; }
WRAP(write, (int fd, const void *buf, size_t count), (fd, buf, count))
WRAP(pwrite, (int fd, const void *buf, size_t count, off_t offset), (fd, buf, count, offset))
WRAP(pwrite64, (int fd, const void *buf, size_t count, off_t offset), (fd, buf, count, offset))
"""
SMALL = 600 * 1024


@contextlib.contextmanager
def small_disk_of(kind: str, tmp_path: Path):
    """(folder, environment for a subprocess): a folder on a 600 KiB disk; pytest.skip when `kind` is unavailable."""
    folder = tmp_path / "disk"
    folder.mkdir(exist_ok=True)
    if kind == "tmpfs":
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root")
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL // 1024}k", "tmpfs", str(folder)],
                                 capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
        try:
            yield folder, dict(os.environ)
        finally:
            subprocess.run(["umount", str(folder)], check=False)
        return
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or not sys.platform.startswith("linux"):
        pytest.skip("the ENOSPC shim needs Linux and a C compiler")
    source = tmp_path / "enospc.c"
    source.write_text(SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(tmp_path / "enospc.so"), str(source), "-ldl"],
                   check=True, capture_output=True)
    yield folder, {**os.environ, "LD_PRELOAD": str(tmp_path / "enospc.so"), "SMALL_DISK_DIR": str(folder),
                   "SMALL_DISK_BYTES": str(SMALL)}


@pytest.fixture(params=["tmpfs", "shim"])
def small_disk(request, tmp_path):
    with small_disk_of(request.param, tmp_path) as disk:
        yield disk


@pytest.fixture
def any_small_disk(tmp_path):
    """A tmpfs where it can be mounted, else the shim."""
    try:
        with small_disk_of("tmpfs", tmp_path) as disk:
            yield disk
            return
    except pytest.skip.Exception:
        pass
    with small_disk_of("shim", tmp_path) as disk:
        yield disk


FILL = """
import json, sys, numpy as np
import data.store.writer as writer_module
from data.store import DiskFullError, ShardWriter
if sys.argv[2] == "no-look-ahead":
    writer_module.HEADROOM_BYTES = -(1 << 50)  # HDF5 itself meets the full disk, mid-video
written = []
try:
    with ShardWriter(sys.argv[1], {attrs!r}, max_videos=2) as writer:
        for i in range(1000):
            writer.add(f"v{{i}}", np.random.default_rng(i).standard_normal((16, 17, 64)).astype(np.float16),
                       np.arange(16.0), 8.0, "x")
            written.append(f"v{{i}}")
except DiskFullError as exc:
    print(json.dumps({{"error": str(exc), "written": written}}))
    sys.exit(3)
"""


@pytest.mark.parametrize("mode", ["look-ahead", "no-look-ahead"])
def test_a_full_disk_stops_the_writer_cleanly(small_disk, mode):
    folder, env = small_disk
    if mode == "look-ahead" and "LD_PRELOAD" in env:
        pytest.skip("the shim's budget is invisible to statvfs: only HDF5's own failure is tested with it")
    cache = folder / "cache"
    attrs = {**ATTRS, "hidden_size": 64}
    proc = subprocess.run([sys.executable, "-c", FILL.format(attrs=attrs), str(cache), mode], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])  # not a crash (-11), not a traceback (1)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert "is full" in result["error"] and str(cache) in result["error"]
    assert not list(cache.glob("*.partial"))  # the open shard was removed, its space given back
    store = FeatureStore(cache)
    assert 4 <= len(store) <= len(result["written"])  # every sealed shard is intact
    for video_id in store.ids():
        want = np.random.default_rng(int(video_id[1:])).standard_normal((16, 17, 64)).astype(np.float16)
        np.testing.assert_array_equal(store.read(video_id), want)


def test_writer_refuses_a_video_the_disk_cannot_take(tmp_path, monkeypatch):
    """The look-ahead: free space below the video's size seals what is complete and raises before writing."""
    writer = ShardWriter(tmp_path, ATTRS)
    writer.add("v1", tokens(1), np.arange(4.0), 2.0, "x")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(DiskFullError, match=rf"{tmp_path} is full \(1.0 KB free"):
        writer.add("v2", tokens(2), np.arange(4.0), 2.0, "x")
    assert [p.name for p in writer.sealed] == ["shard-r00-00000.h5"] and not list(tmp_path.glob("*.partial"))
    assert FeatureStore(tmp_path).ids() == ["v1"]


# ----------------------------------------------------------------------------- both, through extraction
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from bench.faults import make_dataset

    return make_dataset(tmp_path_factory.mktemp("kinds"), videos_per_class=3)  # 10 videos of 2-3 s, 32 px


def extract_args(root: Path, cache: Path, segments: int) -> list[str]:
    return ["--dataset", "synthetic", "--data-root", str(root), "--cache-dir", str(cache), "--encoder",
            "vit-tiny-random", "--segments", str(segments), "--batch", "16", "--workers", "0", "--shard-videos", "2",
            "--no-progress"]


def test_extraction_on_a_full_disk_ends_with_one_error_line(dataset, any_small_disk):
    folder, env = any_small_disk
    cache = folder / "cache"
    # 64 segments x 17 tokens x 64 channels x 2 bytes = 139 KB a video: about four of the ten fit in 600 KiB
    proc = subprocess.run([sys.executable, "-m", "extract", *extract_args(dataset, cache, 64)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    directory = cache / "synthetic" / "vit-tiny-random_seg64"
    assert lines[-1].startswith(f"error: the disk holding the cache folder {directory} is full"), lines[-1]
    if "LD_PRELOAD" not in env:  # the shim's budget is invisible to statvfs
        assert any(line.startswith("warning: 10 videos x 64 segments") for line in lines), lines
    store = FeatureStore(directory)
    assert len(store) >= 2 and not list(directory.glob("*.partial"))


def test_a_second_extraction_leaves_a_live_writer_alone(dataset, tmp_path, capsys):
    """The issue's run B, started while A writes: it keeps A's .partial and both runs' videos end up sealed."""
    from extract.__main__ import main

    directory = tmp_path / "cache" / "synthetic" / "vit-tiny-random_seg8"
    code = WRITER.format(attrs="...", shape=(8, 17, 64)).replace("attrs = '...'", ATTRS_OF_THE_RUN)
    other = subprocess.Popen([sys.executable, "-c", code, str(directory), "a1"], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        expect(other, "added a1")
        partial = next(directory.glob("*.partial"))
        inode = partial.stat().st_ino
        assert main(extract_args(dataset, tmp_path / "cache", 8)) == 0
        err = capsys.readouterr().err
        assert f"another extraction is writing into {directory} right now" in err and partial.name in err
        assert "removed" not in err and partial.stat().st_ino == inode
        step(other)
        expect(other, "sealed")
        assert other.wait(timeout=60) == 0
    finally:
        other.kill()
    store = FeatureStore(directory)
    assert len(store) == 11 and "a1" in store and not partial_shards(store.path)


ATTRS_OF_THE_RUN = """
from extract.encoder import load_encoder
from extract.video import Sampling
attrs = {**load_encoder("vit-tiny-random").attrs(), "pool": "none", **Sampling(segments=8).as_attrs()}
"""
