"""Float32 precision of the S4 kernel backends against a float64 evaluation (issue 13): relative error of the kernel
and of the gradient of every kernel parameter (log_dt, w = A's diagonal, the two halves of B = [B, P] and of
C = [C~, Q]) for loss = sum k^2, each backend in float32 against `naive` in float64.

`python -m bench.kernel_precision [--out bench/results/kernel_precision.json]`: a freshly initialised layer
(HiPPO-LegS, N = 64, S4's own dt draw in [0.001, 0.1]) at the paper's L = 11,820 with H = 16 and at L = 2,048 with
H = 64, about a minute on two cores. The goal (issue 13): `torch` within 3x max(the `naive` float32 error, 1e-5) on
every row. `tests/test_s4_kernels.py` checks the same at sizes that run in seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [(16, 11820), (64, 2048)]  # (H, L): the paper's LVU length; a short 11-smooth one
NAMES = ("kernel", "log_dt", "w", "B", "P", "C", "Q")


def parameter_grads(layer, L: int, backend: str, real):
    """The kernel (H, L) and the gradients of loss = sum k^2 with respect to `layer`'s kernel parameters, computed in
    `real` precision by `backend` and returned as float64: {"kernel", "log_dt", "w", "B", "P", "C", "Q"}."""
    import torch

    from heads.s4.kernels import BACKENDS

    params = {n: getattr(layer, n).detach().to(real).clone().requires_grad_() for n in ("log_dt", "w", "B", "C")}
    dt = torch.exp(params["log_dt"])  # the layer's _nplr, on these copies
    BP, CQ = torch.view_as_complex(params["B"]), torch.view_as_complex(params["C"])  # (H, 2, M)
    v = (CQ.conj()[:, :, None, :] * BP[:, None, :, :]).reshape(BP.shape[0], 4, -1).transpose(0, 1)  # (4, H, M)
    k = BACKENDS[backend](v, dt[:, None] * torch.view_as_complex(params["w"])[None, :], dt, L)
    k.square().sum().backward()
    grads = {n: p.grad.to(torch.float64) for n, p in params.items()}
    return {"kernel": k.detach().to(torch.float64), "log_dt": grads["log_dt"], "w": grads["w"],
            "B": grads["B"][:, 0], "P": grads["B"][:, 1], "C": grads["C"][:, 0], "Q": grads["C"][:, 1]}


def run(cases=CASES, backends=("naive", "torch"), say=print) -> dict:
    """{"H=.. L=..": {name: {backend: relative error}, "ratio": torch / max(naive, 1e-5)}} for every case."""
    import torch

    from heads.s4 import S4

    out = {}
    for H, L in cases:
        torch.manual_seed(0)
        layer = S4(H, d_state=64, l_max=L)
        ref = parameter_grads(layer, L, "naive", torch.float64)
        got = {b: parameter_grads(layer, L, b, torch.float32) for b in backends}
        rows = {}
        for name in NAMES:
            rows[name] = {b: float((got[b][name] - ref[name]).norm() / ref[name].norm()) for b in backends}  # relative
            if {"naive", "torch"} <= set(backends):
                rows[name]["ratio"] = rows[name]["torch"] / max(rows[name]["naive"], 1e-5)
            say(f"H={H} L={L} {name:7s} " + "  ".join(f"{k} {v:.2e}" for k, v in rows[name].items()))
        out[f"H={H} L={L}"] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "kernel_precision.json"))
    args = parser.parse_args(argv)
    from data.outputs import write_json

    result = run()
    write_json(args.out, result)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    from data.errors import run_cli

    run_cli(main)
