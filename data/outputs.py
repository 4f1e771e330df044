"""What every stage writes beside its results (manifest.json, results.json, config.json, bench JSON): values made of
plain JSON types, files written atomically, stamped with the version of the code (and the CPU) that made them.
Standard library only, so extract/, heads/, doctor/ and bench/ share it without importing each other.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:
    """A value as plain JSON types, also safe for `torch.load(weights_only=True)`: numpy scalars and arrays, tensors
    (`tolist`), tuples, Paths and other objects -> python types; dict keys -> str; NaN and infinities -> None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return plain(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_json(path: str | Path, data: Any) -> Path:
    """Write `plain(data)` as indented UTF-8 JSON to `path` atomically (a temporary file renamed over it, so a
    reader never sees half a file), creating the parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plain(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe --always --dirty` of the source tree when it is a git checkout, else the installed package's
    version ("0+unknown" when neither is known). Computed once per process."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vis4mer-pipeline")
    except PackageNotFoundError:
        return "0+unknown"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
