"""What storing features as float16 does to a trained head's logits (README, "Differences from the paper's code").

The paper's code saves its ViT features as float64 .npy files and its model casts them to float32 (`x.to(
torch.float32)` in `ViS4mer.forward`), so the head sees the encoder's float32 output exactly. This project stores
float16. Here the test videos of a trained run are encoded again, in float32, and the run's best checkpoint scores
them twice on the test protocol's clips: from the float32 tokens (the paper's input) and from the same tokens
rounded to float16 (what the cache holds; checked bit for bit against the cache). Figures: the relative rounding of
the features, the logit differences against the logits' own spread, probabilities, and how many predictions change.

`python -m bench.feature_precision [--ckpt runs/.../checkpoints/best.ckpt] [--out bench/results/feature_precision.json]`
(default: the newest s4-multiscale run under runs/demo, which `make demo` trains).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import write_json
from data.errors import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]


def logit_effect(head, tokens32: list) -> dict:
    """Score each clip (T, P, D) float32 of `tokens32` with `head` (eval mode) from float32 and from float16-rounded
    tokens; returns the logits of both and summary figures of their difference."""
    import torch

    head.eval()
    with torch.no_grad():
        full = torch.cat([head(x[None]) for x in tokens32])  # (V, n_out) the paper's input
        half = torch.cat([head(x.half()[None]) for x in tokens32])  # (V, n_out) the cache's
    diff = (half - full).abs()
    p_full, p_half = full.softmax(-1), half.softmax(-1)
    x32 = torch.cat([x.flatten() for x in tokens32])
    err = x32.half().float() - x32
    normal = x32.abs() >= torch.finfo(torch.float16).tiny  # below it float16 is subnormal: relative error grows
    return {
        "videos": len(tokens32),
        "feature_rel_rounding_rms": float(err.norm() / x32.norm()),
        "feature_rel_rounding_max_normal": float((err.abs() / x32.abs())[normal].max()),
        "logit_abs_diff_max": float(diff.max()),
        "logit_abs_diff_median": float(diff.median()),
        "logit_std": float(full.std()),
        "prob_abs_diff_max": float((p_half - p_full).abs().max()),
        "predictions_changed": int((half.argmax(-1) != full.argmax(-1)).sum()),
        "logits_float32": full.tolist(),
        "logits_float16": half.tolist(),
    }


def newest_demo_checkpoint(runs: Path) -> Path:
    found = sorted(runs.glob("**/s4-multiscale/version_*/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no s4-multiscale checkpoint under {runs}; run `make demo` first or pass --ckpt")
    return found[-1]


def measure(ckpt: Path, limit: int | None = None) -> dict:
    import numpy as np
    import torch

    from data import get_dataset
    from data.store import FeatureStore
    from extract.encoder import load_encoder
    from extract.video import SampledVideo, Sampling
    from heads import build_head
    from heads.training.datamodule import uniform_indices
    from heads.training.run import load_checkpoint

    state = load_checkpoint(ckpt)
    config = state["hyper_parameters"]["config"]
    store = FeatureStore(Path(config["cache_dir"]) / config["dataset"] / config["cache"]["tag"])
    meta = store.meta
    if meta.get("segments") is None or tuple(config["clip"])[0] != "subset":
        raise UserError("this measurement re-encodes SEGMENTS= caches scored on uniform subsets (Breakfast, COIN, "
                        f"the synthetic set); {ckpt} was trained on a {tuple(config['clip'])} clip")
    ds = get_dataset(config["dataset"], root=config.get("data_root"), task=config.get("task"))
    encoder = load_encoder(meta["encoder"], pool=None if meta.get("pool") in (None, "none", 1) else meta["pool"])
    if encoder.weights_hash != meta.get("encoder_hash"):
        raise UserError(f"encoder {meta['encoder']} here is not the one that filled {store}")
    head = build_head(config["head"], meta["hidden_size"], config["n_outputs"], config["seq_len"], **config["head_cfg"])
    head.load_state_dict({k.removeprefix("head."): v for k, v in state["state_dict"].items() if k.startswith("head.")})
    sampling = Sampling(segments=int(meta["segments"]), frames_per_segment=int(meta.get("frames_per_segment", 1)))
    records = ds.records("test")[:limit] if limit else ds.records("test")
    clip = int(tuple(config["clip"])[1])
    tokens32, labels = [], []
    for record in records:
        frames, _ = SampledVideo(ds.video_path(record.video_id), sampling, size=encoder.image_size).read()
        with torch.no_grad():
            hidden = encoder.model(pixel_values=encoder.pixel_values(torch.from_numpy(frames))).last_hidden_state
            x = encoder.pool_tokens(hidden.float())  # (T*k, P, D) float32, before the cache's float16 cast
        x = x.reshape(sampling.segments, sampling.frames_per_segment, *x.shape[1:]).mean(1)  # (T, P, D)
        if not np.array_equal(x.half().numpy(), store.read(record.video_id)):
            raise UserError(f"re-encoding {record.video_id} does not give the cached tokens; is {store} stale?")
        tokens32.append(x[torch.from_numpy(uniform_indices(x.shape[0], clip))])  # the test protocol's clip
        labels.append(record.label)
    out = logit_effect(head, tokens32)
    labels_t = torch.tensor(labels)
    out["test_acc_float32"] = float((torch.tensor(out["logits_float32"]).argmax(-1) == labels_t).float().mean())
    out["test_acc_float16"] = float((torch.tensor(out["logits_float16"]).argmax(-1) == labels_t).float().mean())
    out.update(checkpoint=str(ckpt), encoder=meta["encoder"], head=config["head"], head_cfg=config["head_cfg"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feature_precision", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="a best.ckpt [newest s4-multiscale under runs/demo]")
    parser.add_argument("--limit", type=int, default=None, help="at most this many test videos [all]")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "feature_precision.json"))
    args = parser.parse_args(argv)
    ckpt = Path(args.ckpt) if args.ckpt else newest_demo_checkpoint(Path("runs/demo"))
    result = measure(ckpt, args.limit)
    write_json(args.out, result)
    keys = [k for k in result if not k.startswith("logits_")]
    for key in keys:
        print(f"{key:>30}: {result[key]}")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
