"""Issue 15, point 8: the README's exit statuses are what `make` and `python -m extract` return."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_statuses() -> dict[str, list[str]]:
    """The README's exit-status table: first cell -> the other cells."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("**Exit statuses.**"):].split("\n\n")[1]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_exit_statuses_through_make_and_python_are_the_readmes(tmp_path):
    from bench.faults import make_dataset

    statuses = readme_statuses()
    failed = statuses["done, but some videos failed (`failures.jsonl`)"]
    bad_input = statuses["one `error:` line: bad input, a full disk"]
    assert (failed[0], failed[2]) == ("1", "2 (`Error 1`)") and (bad_input[0], bad_input[2]) == ("2", "2 (`Error 2`)")

    root = make_dataset(tmp_path / "data", videos_per_class=1)  # 6 videos
    next((root / "videos").glob("*.mp4")).write_text("not a video\n")
    # this interpreter, and no reinstall whatever the age of .venv's stamp (-o: take it as up to date)
    make = ["make", "--no-print-directory", "-o", ".venv/.installed-stamp", f"PY={sys.executable}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}  # not a sub-make
    variables = [f"DATA_ROOT={root}", f"CACHE_DIR={tmp_path / 'cache'}", "DATASET=synthetic", "SEGMENTS=4",
                 "ENCODER=vit-tiny-random", "WORKERS=0", "BATCH=8"]
    proc = subprocess.run([*make, "extract", *variables], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    made = r"make(\[\d+\])?: \*\*\* \[Makefile:\d+: extract\] Error"  # make's line naming the command's status
    assert re.search(made + " 1$", proc.stderr.strip()), proc.stderr[-2000:]
    assert "1 video(s) failed" in proc.stderr  # python -m extract said why before returning 1

    proc = subprocess.run([*make, "extract", *variables, "FPS=1"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-2].startswith("error: give FPS or SEGMENTS, not both"), lines
    assert re.search(made + " 2$", lines[-1]), lines
    direct = subprocess.run([sys.executable, "-m", "extract", "--fps", "1", "--segments", "4"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert direct.returncode == 2
