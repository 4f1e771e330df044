"""The make interface: a misspelt variable stops make with one line naming the closest known one; every variable
`make help` documents is known; the known set is read from the Makefile itself (a new variable needs no list)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*args: str, makefile: Path = REPO / "Makefile") -> subprocess.CompletedProcess:
    # -n: print the recipe instead of running it; the variable check happens while make reads the file
    return subprocess.run(["make", "-s", "-n", "-f", str(makefile), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def documented_variables() -> set[str]:
    """Every NAME that `make help` lists in its Variables section."""
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    section = out.split("Variables", 1)[1]
    while re.search(r"\([^()]*\)|\[[^\[\]]*\]", section):  # explanations and defaults name no variable
        section = re.sub(r"\([^()]*\)|\[[^\[\]]*\]", "", section)
    names = set()
    for line in section.splitlines():  # each line starts with the names it documents: NAME[=1], NAME | NAME ...
        name = r"[A-Z][A-Z0-9_]*[A-Z0-9](?:=\S+)?"
        lead = re.match(rf"\s*((?:{name}(?:\s*[,|/]\s*{name})*)?)", line).group(1)
        names.update(re.findall(r"[A-Z][A-Z0-9_]*[A-Z0-9]", lead))
    return names


def test_misspelt_variable_stops_with_the_closest_name():
    proc = make("train", "HEAD=mean-pool", "EPOHCS=3")
    assert proc.returncode != 0 and proc.stdout == ""  # nothing was run
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "EPOHCS is not a variable" in lines[0] and "did you mean EPOCHS?" in lines[0]
    proc = make("train", "d_model=16", "NOTHING_LIKE_IT=1")  # lower case; and no close match at all
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "d_model is not a variable of this Makefile; did you mean D_MODEL?" in proc.stderr
    assert "NOTHING_LIKE_IT is not a variable of this Makefile (make help" in proc.stderr


def test_every_documented_variable_is_known():
    names = documented_variables()
    assert {"EPOCHS", "D_MODEL", "N_LAYERS", "D_STATE", "DROPOUT", "CLIP", "EVAL_STRIDE", "ALLOW_MISSING",
            "REQUIRE_ALL", "VERBOSE", "DEBUG", "QUICK", "CKPT", "RUN"} <= names
    proc = make("train", *(f"{name}=1" for name in sorted(names)))
    assert proc.returncode == 0, proc.stderr


def test_head_and_data_variables_reach_the_command_line():
    proc = make("train", "D_MODEL=16", "N_LAYERS=2", "D_STATE=8", "DROPOUT=0", "CLIP=subset:4", "EVAL_STRIDE=2",
                "ALLOW_MISSING=1", "REQUIRE_ALL=0", "EPOCHS=3")
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.split()
    for option, value in (("--d-model", "'16'"), ("--n-layers", "'2'"), ("--d-state", "'8'"), ("--dropout", "'0'"),
                          ("--clip", "'subset:4'"), ("--eval-stride", "'2'"), ("--epochs", "'3'")):
        assert command[command.index(option) + 1] == value
    assert "--allow-missing" in command and "--require-all" not in command  # REQUIRE_ALL=0 means off


def test_known_variables_come_from_the_makefile_itself(tmp_path):
    makefile = tmp_path / "Makefile"
    makefile.write_text((REPO / "Makefile").read_text() + "\nnewtarget:\n\t@echo $(call opt,BRAND_NEW,brand-new)\n")
    assert make("newtarget", "BRAND_NEW=1", makefile=makefile).returncode == 0
    proc = make("newtarget", "BRAND_NWE=1", makefile=makefile)
    assert proc.returncode != 0 and "did you mean BRAND_NEW?" in proc.stderr
