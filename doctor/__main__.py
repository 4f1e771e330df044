"""`python -m doctor [--cache-dir cache] [--encoder ID] [--json PATH]`: the set-up check behind `make doctor`.

`collect()` gathers the facts as a dict (every probe guarded: a check that fails is reported, never raised),
`render()` turns them into the screen. Exit status 0 whatever the findings: a missing GPU is a fact, not an error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import sys
from pathlib import Path

from data.errors import run_cli


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB"


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda,
           "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else "n/a"}
    for name in ("numba", "pykeops", "transformers", "pytorch-lightning", "h5py", "av"):
        try:  # the installed distribution's version, without importing it
            out[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name.replace("-", "_")] = "not installed"
    return out


def devices() -> list[dict]:
    import torch

    from data.outputs import cpu_name

    cpu = cpu_name()
    found = [{"device": "cpu", "name": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append({"device": f"cuda:{i}", "name": p.name, "memory": _gb(p.total_memory),
                          "capability": f"{p.major}.{p.minor}", "bf16": torch.cuda.is_bf16_supported()})
    return found


def keops(device_types: tuple[str, ...] = ("cpu", "cuda"), say=print) -> dict:
    import torch

    from heads.s4 import keops_health

    out = {}
    for kind in device_types:
        if kind == "cpu" or torch.cuda.is_available():
                say(f"probing PyKeOps on {kind} (the first probe compiles: up to a few minutes) ...", file=sys.stderr,
                flush=True)
        h = keops_health.probe(kind)
        out[kind] = {"ok": h.ok, "cause": h.cause, "seconds": round(h.seconds, 2), "max_rel_error": h.max_rel_error}
    return out


def auto_backends(device_types: tuple[str, ...] = ("cpu", "cuda")) -> dict:
    """The backend `auto` resolves to per device type (the keops probe decides on CUDA)."""
    import torch

    from heads.s4.kernels import resolve_backend

    out = {}
    for kind in device_types:
        if kind == "cuda" and not torch.cuda.is_available():
            out[kind] = None
            continue
        out[kind] = resolve_backend("auto", kind)
    return out


def numba_loops() -> dict:
    from heads.s4 import numba_loops as loops

    folder = Path(loops.__file__).parent
    cache = folder / "__pycache__"
    writable = os.access(cache if cache.exists() else folder, os.W_OK)
    return {"available": loops.available(), "used_on_cpu": loops.describe("cpu"),
            "disk_cache": str(cache) if writable else None}


def encoder(name: str | None = None) -> dict:
    """Is the encoder loadable without a network: a local folder with config + weights, or both in the HF cache."""
    from extract import DEFAULT_ENCODER
    from extract.encoder import TINY_RANDOM

    name = name or DEFAULT_ENCODER
    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    if name == TINY_RANDOM:
        return {"encoder": name, "offline": True, "where": "built from a config (random weights)"}
    path = Path(name).expanduser()
    if path.is_dir():
        ok = (path / "config.json").is_file() and any((path / w).is_file() for w in weights)
        return {"encoder": name, "offline": ok, "where": str(path)}
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        config = try_to_load_from_cache(name, "config.json")
        found = [w for w in weights if isinstance(try_to_load_from_cache(name, w), str)]
        ok = isinstance(config, str) and bool(found)
        return {"encoder": name, "offline": ok, "where": str(constants.HF_HUB_CACHE)}
    except Exception as exc:  # noqa: BLE001
        return {"encoder": name, "offline": False, "where": f"cannot check ({type(exc).__name__}: {exc})"}


def disk(cache_dir: str | Path) -> dict:
    """Free space on the file system that holds `cache_dir` (its nearest existing folder when it does not exist)."""
    path = Path(cache_dir).expanduser().resolve()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return {"cache_dir": str(cache_dir), "exists": path.exists(), "free_bytes": usage.free,
            "total_bytes": usage.total}


def default_encoders() -> list[dict]:
    """The offline check of every data set's default encoder (LVU's ViT-L/16 frames, Breakfast's and COIN's video
    encoder), each with the data sets it is the default of ("used_by")."""
    from data import DATASETS
    from extract import DEFAULT_ENCODERS

    found = []
    for kind, name in DEFAULT_ENCODERS.items():
        users = sorted(d for d, cls in DATASETS.items() if cls.paper_features == kind)
        found.append({**encoder(name), "used_by": users})
    return found


def collect(cache_dir: str | Path = "cache", encoder_name: str | None = None, say=print) -> dict:
    """Every check, each guarded: {"versions", "devices", "keops", "auto", "numba", "encoder", "disk"}; "encoder"
    is a list: `encoder_name`, or every data set's default encoder."""
    out: dict = {}
    checks = {"versions": versions, "devices": devices, "keops": lambda: keops(say=say), "auto": auto_backends,
              "numba": numba_loops, "disk": lambda: disk(cache_dir),
              "encoder": lambda: [encoder(encoder_name)] if encoder_name else default_encoders()}
    for key, check in checks.items():
        try:
            out[key] = check()
        except Exception as exc:  # noqa: BLE001 - the doctor reports what broke and goes on
            out[key] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}
    return out


def render(facts: dict) -> list[str]:
    """The screen: one line per fact (facts missing from `facts` are left out)."""
    lines = []

    def failed(key: str) -> bool:  # True (nothing more to print) when the check broke or was not run
        if key not in facts:
            return True
        if isinstance(facts.get(key), dict) and "error" in facts[key]:
            lines.append(f"{key:<13}check failed: {facts[key]['error']}")
            return True
        return False

    if not failed("versions"):
        v = facts["versions"]
        build = f"CUDA {v['torch_cuda']}, cuDNN {v['cudnn']}" if v["torch_cuda"] else "a CPU build, no CUDA"
        others = ", ".join(f"{k} {v[k]}" for k in ("numba", "pykeops", "transformers", "pytorch_lightning"))
        lines.append(f"{'versions':<13}python {v['python']}, torch {v['torch']} ({build}), {others}")
    if not failed("devices"):
        for d in facts["devices"]:
            if d["device"] == "cpu":
                lines.append(f"{'device cpu':<13}{d['name']}, {d['cores']} cores, {d['torch_threads']} torch threads")
            else:
                lines.append(f"{'device ' + d['device']:<13}{d['name']}, {d['memory']}, compute capability "
                             f"{d['capability']}, bf16 {'yes' if d['bf16'] else 'no'}")
        if not any(d["device"].startswith("cuda") for d in facts["devices"]):
            lines.append(f"{'device cuda':<13}none visible to torch")
    if not failed("keops"):
        for kind, h in facts["keops"].items():
            state = (f"ok (compiles, runs, agrees with the torch kernel to {h['max_rel_error']:.1e}; "
                     f"{h['seconds']:.1f} s)") if h["ok"] else f"unavailable: {h['cause']}"
            lines.append(f"{'pykeops ' + kind:<13}{state}")
    if not failed("numba"):
        n = facts["numba"]
        where = f"cached on disk in {n['disk_cache']}" if n["disk_cache"] else "cached in memory only (read-only)"
        lines.append(f"{'numba loops':<13}" + (f"{n['used_on_cpu']}: the torch kernel's elementwise loops are "
                                               f"compiled on CPU ({where})" if n["available"] else
                                               "numba not importable: torch-op chains instead (slower CPU kernel)"))
    if not failed("auto"):
        picks = [f"{kind} -> {name}" if name else f"{kind} -> (no device)" for kind, name in facts["auto"].items()]
        lines.append(f"{'backend auto':<13}" + "; ".join(picks))
    if not failed("encoder"):
        found = facts["encoder"] if isinstance(facts["encoder"], list) else [facts["encoder"]]
        for e in found:
            users = f" (default of {', '.join(e['used_by'])})" if e.get("used_by") else ""
            lines.append(f"{'encoder':<13}{e['encoder']}{users}: " + (
                f"available offline ({e['where']})" if e["offline"] else
                f"NOT available offline (looked in {e['where']}); download it where there is internet "
                "(`hf download <id>`, huggingface_hub's CLI) or pass ENCODER=/folder saved with save_pretrained"))
    if not failed("disk"):
        d = facts["disk"]
        lines.append(f"{'disk':<13}{_gb(d['free_bytes'])} free of {_gb(d['total_bytes'])} under CACHE_DIR="
                     f"{d['cache_dir']}{'' if d['exists'] else ' (not created yet)'}; ViT-L/16 at 1 frame/s costs "
                     "24 MB per minute of video")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default="cache", help="where extracted features go [cache]")
    parser.add_argument("--encoder", default=None,
                        help="encoder to check for offline use [every data set's default encoder]")
    parser.add_argument("--json", default=None, help="also write the facts as JSON to this path")
    args = parser.parse_args(argv)
    from data.console import quiet_libraries

    quiet_libraries()  # KeOps's "CUDA libraries not found" and the like: the screen says it in its own words
    facts = collect(args.cache_dir, args.encoder)
    print("\n".join(render(facts)))
    if args.json:
        from data.outputs import write_json

        print(f"saved {write_json(args.json, facts)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
