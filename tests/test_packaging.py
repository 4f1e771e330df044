"""`pip install .` ships every module: a wheel built from the project's files holds each module of data/, extract/,
heads/, predict/ and doctor/ (sub-packages included), and neither tests/ nor bench/; unpacked on its own, every
module imports from it."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "extract", "heads", "predict", "doctor")


def source_modules() -> set[str]:
    """Every .py file under the shipped packages, as a path relative to the repository root (data/raw/ excluded:
    it holds videos, never code)."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts or rel.parts[:2] == ("data", "raw"):
                continue
            found.add(rel.as_posix())
    return found


def test_shipped_modules_import_only_shipped_code():
    """An import of bench/ or tests/ (not in the wheel) from a shipped module fails only when that line runs, which
    importing the module does not show when the import sits inside a function: every import statement is checked."""
    offenders = []
    for rel in sorted(source_modules()):
        for node in ast.walk(ast.parse((ROOT / rel).read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            offenders += [f"{rel}: {n}" for n in names if n.split(".")[0] in ("bench", "tests")]
    assert offenders == []


@pytest.mark.slow
def test_wheel_holds_every_module(tmp_path):
    src = tmp_path / "src"  # a copy, so the build's build/ and *.egg-info never land in the checkout
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "raw")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    out = tmp_path / "wheels"
    # --no-build-isolation: build with this environment's setuptools (a dev extra), offline
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    wheels = list(out.glob("vis4mer_pipeline-*.whl"))
    assert len(wheels) == 1, sorted(p.name for p in out.iterdir())
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    shipped = {n for n in names if n.endswith(".py")}
    expected = source_modules()
    assert {"data/datasets/lvu.py", "heads/__init__.py", "extract/video.py"} <= expected  # the walk sees sub-packages
    assert expected - shipped == set(), "modules missing from the wheel"
    assert not {n for n in shipped if n.split("/")[0] in ("tests", "bench")}, "tests/ or bench/ shipped"

    # every module imports from the unpacked wheel alone (not from this checkout, which the editable install maps)
    site = tmp_path / "site"
    zipfile.ZipFile(wheels[0]).extractall(site)
    modules = sorted(m[:-3].replace("/", ".").removesuffix(".__init__") for m in expected)
    probe = ("import importlib, sys\n"
             "for name in sys.argv[1:]:\n"
             "    m = importlib.import_module(name)\n"
             f"    assert m.__file__.startswith({str(site)!r}), (name, m.__file__)\n")
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe, *modules], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
