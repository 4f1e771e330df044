"""`python -m heads train|ablate|eval|report …` (what `make train`, `make ablate`, `make eval`, `make report` call).

    python -m heads train [--head s4-multiscale] [--dataset D] [--task T] [--epochs 100] [--batch 16] [--lr 1e-3]
                          [--devices N --nodes M --accelerator cpu|gpu|auto] [--resume CKPT] [--d-model 1024 …]
    python -m heads ablate [--heads s4-multiscale,mean-pool] [--seeds 0,1,2] [--name default] [train's options]
    python -m heads eval --ckpt runs/<dataset>/<head>/version_N/checkpoints/best.ckpt
    python -m heads report --run runs/<dataset>/<head>/version_N
    python -m heads defaults
Bad input prints one `error: …` line (exit 2), a diverged loss one line with exit 1; DEBUG=1 shows the traceback;
VERBOSE=1 shows the libraries' own messages. SIGTERM stops a run the way Ctrl-C does (the resume hint; exit status
143, Ctrl-C's 130).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.console import interrupt_status, quiet_libraries, stop_on_sigterm
from data.errors import UserError, run_cli
from heads import HEADS
from heads.config import ABLATION, HEAD, TRAIN, describe_defaults


def _int_or_str(text: str):
    return int(text) if text.isdigit() else text


def missing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-missing", action="store_true",
                   help="also go without videos whose media are on disk but not extracted yet")
    p.add_argument("--require-all", action="store_true",
                   help="stop unless every listed video is cached [skip, and count, videos without media or whose "
                        "extraction failed]")


def run_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of one training run except which head, which seed and where (shared by train and ablate)."""
    p.add_argument("--dataset", default=None, help="[the data set most recently extracted into the cache, else "
                                                   "synthetic]")
    p.add_argument("--task", default=None, help="LVU task or Breakfast split, or 'all' (each task in turn) "
                                                "[dataset default]")
    p.add_argument("--data-root", default=None, help="raw data set folder (labels) [data/raw/<dataset>]")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--tag", default=None, help="cache tag directory name [most recent]")
    p.add_argument("--runs-dir", default="runs")
    # None = the resumed run's own value, else heads.config.TRAIN (shown in brackets)
    p.add_argument("--epochs", type=int, default=None, help=f"[{TRAIN.epochs}]")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help=f"[{TRAIN.batch}]")
    p.add_argument("--lr", type=float, default=None, help=f"[{TRAIN.lr}]")
    p.add_argument("--weight-decay", type=float, default=None, help=f"[{TRAIN.weight_decay}]")
    p.add_argument("--plateau-factor", type=float, default=None,
                   help=f"LR factor on a val-metric plateau [{TRAIN.plateau_factor}]")
    p.add_argument("--plateau-patience", type=int, default=None,
                   help=f"epochs without improvement before reducing [{TRAIN.plateau_patience}]")
    p.add_argument("--devices", type=_int_or_str, default=1, help="[1]; >1 (or --nodes >1) uses DDP; 'auto' = all")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--accelerator", default=None, help="cpu | gpu | auto [auto]")
    p.add_argument("--precision", default=None, help="Lightning precision, e.g. 16-mixed / bf16-mixed [32]")
    p.add_argument("--workers", type=int, default=TRAIN.workers, help="data loader workers per process")
    p.add_argument("--d-model", type=int, default=None, help=f"[{HEAD.d_model}]")
    p.add_argument("--n-layers", type=int, default=None, help=f"[{HEAD.n_layers}]")
    p.add_argument("--d-state", type=int, default=None, help=f"[{HEAD.d_state}]")
    p.add_argument("--dropout", type=float, default=None, help=f"[{HEAD.dropout}]")
    p.add_argument("--n-heads", type=int, default=None, help=f"attention heads (transformer heads) [{HEAD.n_heads}]")
    p.add_argument("--attention", default=None, choices=("sdpa", "materialized"), help=f"[{HEAD.attention}]")
    p.add_argument("--backend", default=None, help=f"S4 Cauchy backend [{HEAD.backend}]")
    p.add_argument("--clip", default=None, help="window:W or subset:K [the dataset's protocol]")
    p.add_argument("--eval-stride", type=int, default=None,
                   help=f"stride (segments) between evaluation windows [{TRAIN.eval_stride}]")
    p.add_argument("--val-fraction", type=float, default=None,
                   help=f"train share held out when there is no val split [{TRAIN.val_fraction}]")
    missing_options(p)
    p.add_argument("--fast-dev-run", action="store_true", help="one batch of each loop (smoke test)")
    p.add_argument("--limit-batches", type=float, default=None, help="fraction / number of batches per loop")
    p.add_argument("--log-every", type=int, default=10)
    # Lightning's bar writes to stdout, our lines to stderr: the bar only when both are a terminal (`make train > log`
    # keeps the log free of bar frames and shows the epoch lines instead)
    p.add_argument("--progress", action="store_true", default=sys.stdout.isatty() and sys.stderr.isatty(),
                   help="progress bar [when stdout and stderr are a terminal]")
    return p


def train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a head on cached features")
    p.add_argument("--head", default=None, help=f"one of {', '.join(HEADS)} [s4-multiscale]")
    p.add_argument("--seed", type=int, default=None, help=f"[{TRAIN.seed}]")
    p.add_argument("--resume", default=None,
                   help="continue from a checkpoint (.../checkpoints/last.ckpt), or 'last' for the newest one")
    p.add_argument("--run-dir", default=None, help="[<runs-dir>/<dataset>[-<task>]/<head>/version_N]")
    return run_options(p)


def ablate_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("ablate", help="train every head x seed on one cache; mean ± std table")
    p.add_argument("--heads", default=ABLATION.heads, help=f"comma-separated, from {', '.join(HEADS)} "
                                                           f"[{ABLATION.heads}]")
    p.add_argument("--seeds", default=ABLATION.seeds, help=f"comma-separated integers [{ABLATION.seeds}]")
    p.add_argument("--name", default=ABLATION.name, help="the ablation's folder under <runs-dir>/ablate/<dataset>"
                                                         f"[-<task>]/ [{ABLATION.name}]")
    return run_options(p)


def eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="validate and test a checkpoint")
    p.add_argument("--ckpt", default=None, help="checkpoint [the newest best.ckpt under --runs-dir]")
    p.add_argument("--runs-dir", default="runs", help="where to look for the newest best.ckpt [runs]")
    p.add_argument("--cache-dir", default=None, help="[the one the checkpoint was trained on]")
    p.add_argument("--data-root", default=None)
    p.add_argument("--tag", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--workers", type=int, default=TRAIN.workers)
    p.add_argument("--accelerator", default=None)
    missing_options(p)
    return p


def report_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="curves and confusion matrix of a run (--run DIR)")
    p.add_argument("--run", default=None, help="run directory (runs/<dataset>/<head>/version_N)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heads", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    train_parser(sub)
    ablate_parser(sub)
    eval_parser(sub)
    report_parser(sub)
    sub.add_parser("defaults", help="print the training and head defaults (what make help shows)")
    args = parser.parse_args(argv)
    if args.command is None:
        raise UserError("give a command: python -m heads train|ablate|eval|report|defaults (see --help)")
    if args.command == "defaults":
        print(describe_defaults())
        return 0
    if args.command == "report":
        from heads.training.report import report

        if not args.run:
            raise UserError("no run given: make report RUN=runs/<dataset>/<head>/version_N")
        for path in report(Path(args.run)):
            print(f"saved {path}")
        return 0
    import pytorch_lightning  # noqa: F401 -- before quiet_libraries: importing Lightning sets its loggers' levels

    from heads.training.ablate import ablate, parse_heads, parse_seeds
    from heads.training.run import QUIET_WARNINGS, evaluate, train
    from heads.training.run_dir import summary_line

    quiet_libraries(*QUIET_WARNINGS)
    stop_on_sigterm()
    if args.command in ("train", "ablate"):
        for name in ("epochs", "batch", "workers"):
            if getattr(args, name) is not None and getattr(args, name) < (0 if name == "workers" else 1):
                raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.command == "train":
        args.head_given = args.head is not None
        args.head = args.head or "s4-multiscale"
        if args.task == "all" and (args.resume or args.run_dir):
            raise UserError("TASK=all runs every task in its own run: drop RESUME=/--run-dir (rerunning the same "
                            "command resumes an interrupted task and skips the finished ones)")
    try:
        if args.command == "ablate":
            return ablate(args, parse_heads(args.heads), parse_seeds(args.seeds))
        if args.command == "train" and args.task == "all":  # each task in turn: an ablation of one head and seed
            args.name = ABLATION.name
            return ablate(args, [args.head], [TRAIN.seed if args.seed is None else args.seed])
        results, is_global_zero = train(args) if args.command == "train" else (evaluate(args), True)
    except SystemExit as exc:  # Lightning's stop on Ctrl-C or SIGTERM; the resume hint is printed (console.py)
        status = interrupt_status(exc)
        if status is None:
            raise
        return status
    if is_global_zero:  # the last line printed: one-line summary of the test metric
        print(summary_line(results), flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
