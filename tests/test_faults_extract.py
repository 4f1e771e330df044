"""Issue 8 for extraction: kill -9 mid-run, bad videos, bad configuration, offline encoders, missing media."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_extract_media import make_bad_videos, write_video

from bench.faults import clean_reference, kill_trial, make_dataset
from data.errors import run_cli
from data.store import FeatureStore, read_failures
from extract.__main__ import main

REPO = Path(__file__).resolve().parents[1]
# What each bad file must become in failures.jsonl: (kind, words the reason must contain)
EXPECTED = {
    "zero_bytes": ("empty_file", "0 bytes"),
    "truncated": ("truncated", "download it again"),
    "text": ("cannot_open", "cannot open"),
    "audio_only": ("no_video_stream", "no video stream"),
    "single_frame": ("too_short", "1 frame"),
    "too_short": ("too_short", "shorter than one segment"),
    "unreadable": ("unreadable", "permission denied"),
    "corrupt_header": ("cannot_open", "cannot open"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("faults"), videos_per_class=3)  # 10 videos


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_kill_9_then_rerun_loses_nothing(dataset, tmp_path):
    reference = clean_reference(dataset, tmp_path / "clean")
    for seed in (1, 2):
        result = kill_trial(dataset, tmp_path / f"trial{seed}", reference, seed=seed)
        assert result["problems"] == [], result
        assert result["lost"] == 0 and result["duplicated"] == 0


def test_every_bad_video_is_recorded_and_the_run_completes(dataset, tmp_path, monkeypatch, capsys, extract_cli):
    root = copy_dataset(dataset, tmp_path / "data")
    videos = sorted((root / "videos").glob("*.mp4"))
    bad = make_bad_videos(tmp_path / "bad", good_source=videos[0])
    victims = dict(zip(EXPECTED, videos[1:]))  # kind -> the synthetic video it replaces
    for kind, target in victims.items():
        os.chmod(target, 0o644)
        shutil.copyfile(bad[kind], target)
    os.chmod(victims["unreadable"], 0)
    if os.geteuid() == 0:  # root reads mode-000 files; simulate the kernel's EACCES for that one file
        real_open = builtins.open

        def fake_open(file, *a, **k):
            if Path(str(file)) == victims["unreadable"]:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *a, **k)

        monkeypatch.setattr("extract.video.open", fake_open, raising=False)

    status = main(extract_cli(root, tmp_path / "cache", "--fps", "2"))
    assert status == 1  # something failed: non-zero, but the run went to the end
    directory = tmp_path / "cache" / "synthetic" / "vit-tiny-random_fps2"
    failures = {r["video_id"]: r for r in read_failures(directory)}
    by_kind = {kind: failures[target.stem] for kind, target in victims.items()}
    for kind, (error_kind, words) in EXPECTED.items():
        assert by_kind[kind]["error"].startswith(error_kind + ":"), (kind, by_kind[kind])
        assert words in by_kind[kind]["error"], (kind, by_kind[kind])
    good = {p.stem for p in videos} - {p.stem for p in victims.values()}
    assert set(FeatureStore(directory).ids()) == good and len(failures) == len(EXPECTED)
    err = capsys.readouterr().err
    assert f"{len(EXPECTED)} failed" in err and "failures.jsonl" in err
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["last_run"]["failed"] == len(EXPECTED) and manifest["videos_sealed"] == len(good)

    # A rerun retries only the failures (the good videos are sealed) and still reports them.
    assert main(extract_cli(root, tmp_path / "cache", "--fps", "2")) == 1
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["last_run"]["skipped"] == len(good) and manifest["last_run"]["extracted"] == 0


def test_missing_media_is_counted_not_fatal(dataset, tmp_path, capsys, extract_cli):
    root = copy_dataset(dataset, tmp_path / "data")
    gone = sorted((root / "videos").glob("*.mp4"))[0]
    gone.unlink()
    assert main(extract_cli(root, tmp_path / "cache", "--segments", "4")) == 0
    assert "1 missing media" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "cache/synthetic/vit-tiny-random_seg4/manifest.json").read_text())
    assert manifest["missing"] == [gone.stem]
    for path in (root / "videos").glob("*.mp4"):
        path.unlink()
    with pytest.raises(SystemExit) as info:
        run_cli(main, extract_cli(root, tmp_path / "cache2", "--segments", "4"))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: none of the") and "DATA_ROOT" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("extra,words", [
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--dataset", "lvu", "--task", "nope"], "unknown TASK 'nope'"),
    (["--data-root", "/no/such/folder"], "DATA_ROOT=/no/such/folder does not exist"),
    (["--fps", "1", "--segments", "8"], "not both"),
    (["--pool", "x"], "POOL must be an integer"),
    (["--batch", "0"], "BATCH must be > 0"),
])
def test_bad_configuration_is_one_line(extra, words, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        run_cli(main, ["--cache-dir", str(tmp_path), *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1, err


def test_unknown_encoder_offline_in_a_real_process(dataset, tmp_path, extract_cli):
    """The whole command, as a person runs it: one line on stderr, exit 2, no traceback; DEBUG=1 shows it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    env.pop("DEBUG", None)
    cmd = [sys.executable, "-m", "extract", *extract_cli(dataset, tmp_path / "cache")]
    cmd[cmd.index("vit-tiny-random")] = "google/vit-base-patch16-224-in21k"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "HF_HUB_OFFLINE" in lines[0] and "save_pretrained" in lines[0] and "internet" in lines[0]
    proc = subprocess.run([sys.executable, "-m", "extract", "--dataset", "nope"], cwd=REPO,
                          env={**env, "DEBUG": "1"}, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_video_file_kinds_have_readable_reasons(tmp_path):
    """The table in the README, checked one file at a time at the decoder level (both sampling modes)."""
    from extract.video import SampledVideo, Sampling, VideoError

    good = write_video(tmp_path / "good.mp4", n=50)
    bad = make_bad_videos(tmp_path / "bad", good)
    for kind, path in bad.items():
        if kind == "unreadable" and os.geteuid() == 0:
            continue  # covered with a simulated EACCES in the run above
        for sampling in (Sampling(fps=2), Sampling(segments=4)):
            if kind == "too_short" and sampling.segments:
                continue  # segments cover the whole video, however short: not a failure
            with pytest.raises(VideoError) as info:
                SampledVideo(path, sampling, size=16).read()
            assert info.value.kind == EXPECTED[kind][0], (kind, str(info.value))


def test_cache_of_other_weights_is_refused(dataset, tmp_path, capsys, extract_cli):
    """Same tag (same folder name and sampling) but different weights: never mix them in one cache."""
    from transformers import ViTConfig, ViTModel

    def save(seed: int) -> Path:
        import torch

        torch.manual_seed(seed)
        model = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64), add_pooling_layer=False)
        model.save_pretrained(tmp_path / "my-vit")
        return tmp_path / "my-vit"

    root = copy_dataset(dataset, tmp_path / "data")
    videos = sorted((root / "videos").glob("*.mp4"))
    held_back = videos[-1].rename(tmp_path / videos[-1].name)
    args = extract_cli(root, tmp_path / "cache", "--segments", "4")
    args[args.index("vit-tiny-random")] = str(save(0))
    assert main(args) == 0
    held_back.rename(videos[-1])
    save(1)
    with pytest.raises(SystemExit) as info:
        run_cli(main, args)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and "other weights" in err and "CACHE_DIR" in err
