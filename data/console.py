"""What the entry points print besides their results: our own lines, and the libraries' only with VERBOSE=1 (standard
library only, so `python -m extract` and `python -m heads` share it without importing each other).

The libraries speak on stderr in two ways: Python logging (Lightning's "GPU available: …", "Restoring states from
…", its tips; transformers' load reports) and the `warnings` module (deprecations, Lightning's advice about workers
and logging intervals). `quiet_libraries()` raises the libraries' loggers to ERROR and ignores warnings raised from
inside their modules; with `VERBOSE=1` in the environment it leaves both as the libraries set them. Our own lines
(`say`) go to stderr either way; results go to stdout and files.

Call `quiet_libraries()` after the libraries are imported: importing Lightning or transformers sets their loggers'
levels, which would undo an earlier call.

`stop_on_sigterm()` makes SIGTERM (what `kill`, schedulers and container runtimes send) stop a run the way Ctrl-C
does: outside Lightning a KeyboardInterrupt in the main thread (which `run_cli` turns into one line); inside it,
Lightning's own handling (a stop at the next batch boundary). DataLoader workers ignore it (`sigterm_to_main()`, their
worker_init_fn): a scheduler signals every process of the job, and a worker killed under the main process turns the
stop into a traceback; the main process shuts its workers down instead.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings

# Loggers of the libraries the stages use (a name covers its children: "pytorch_lightning.trainer…").
LIBRARY_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning", "lightning_utilities", "transformers",
                   "huggingface_hub", "torch", "torchmetrics", "numba", "pykeops", "keopscore", "matplotlib", "h5py")
# Warnings raised from these modules (the `module` a warning is attributed to by its stacklevel).
LIBRARY_MODULES = (r"(pytorch_lightning|lightning_fabric|lightning|lightning_utilities|torch|torchmetrics|"
                   r"transformers|huggingface_hub|numba|pykeops|keopscore|matplotlib|h5py|tqdm)(\..*)?$")


def verbose_enabled() -> bool:
    """VERBOSE=1 (make's variable, read from the environment): show the libraries' own messages."""
    return os.environ.get("VERBOSE", "") not in ("", "0", "false", "False", "no")


def quiet_libraries(*warning_patterns: str, verbose: bool | None = None) -> None:
    """For the rest of the process: ignore the warnings whose message matches one of the regular expressions (advice
    that does not apply to us, always), and silence the libraries' info lines and warnings unless `verbose` (default:
    VERBOSE=1 in the environment)."""
    for pattern in warning_patterns:
        warnings.filterwarnings("ignore", message=pattern)
    if verbose_enabled() if verbose is None else verbose:
        return
    # read when these libraries are imported (later, or in a child process): order-proof, unlike logger levels
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("KEOPS_VERBOSE", "0")  # "[KeOps] Warning : CUDA libraries not found" on CPU machines
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=LIBRARY_MODULES)
    # Lightning's own warning classes, wherever their stacklevel points (often at the caller's code)
    for category in _lightning_warning_classes():
        warnings.filterwarnings("ignore", category=category)


def _lightning_warning_classes() -> list[type[Warning]]:
    found = []
    for module, name in (("lightning_fabric.utilities.warnings", "PossibleUserWarning"),
                         ("lightning_fabric.utilities.rank_zero", "LightningDeprecationWarning")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found.append(cls)
    return found


def say(message: str) -> None:
    """One of our own lines: stderr, flushed (stdout keeps the results)."""
    print(message, file=sys.stderr, flush=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt (so every handler of one stops for the other)."""


def interrupt_status(exc: BaseException) -> int | None:
    """The exit status of a stop on a signal, 128 + the signal as shells report it: 130 for Ctrl-C (SIGINT), 143 for
    SIGTERM; None when `exc` is not one. Understands Lightning's own stops: its SIGTERMException (a SystemExit), and
    the sys.exit(1) it calls while handling a KeyboardInterrupt (which is then the exit's __context__)."""
    if isinstance(exc, SystemExit) and type(exc).__name__ != "SIGTERMException":
        exc = exc.__context__ if isinstance(exc.__context__, KeyboardInterrupt) else None
    if exc is None:
        return None
    if isinstance(exc, Terminated) or type(exc).__name__ == "SIGTERMException":
        return 128 + signal.SIGTERM
    return 128 + signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread, except while a library that handles SIGTERM
    itself has replaced this handler with its own (Lightning, during fit/validate/test/predict: its loops stop at
    the next batch boundary and raise SIGTERMException; callers turn that into the same clean stop)."""

    def handler(signum, frame):
        if signal.getsignal(signal.SIGTERM) is not handler:  # Lightning's handler called us after its own
            return
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def ignore_sigterm(worker_id: int | None = None) -> None:
    """DataLoader worker_init_fn: the worker leaves SIGTERM to the main process, which stops the workers itself.
    Give DataLoaders `sigterm_to_main()` rather than this function: it also makes sure such workers end at exit."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_EXIT_KILL = []  # [True] once the exit handler below is registered


def sigterm_to_main():
    """The worker_init_fn for a DataLoader of this (main) process whose workers ignore SIGTERM (`ignore_sigterm`).

    At exit, multiprocessing ends the daemon children still alive (the workers of a loader iterator that nobody
    closed, such as one Lightning's fit loop keeps) with SIGTERM and then waits for them: a worker that ignores it
    would keep the process waiting forever. So the first call registers an exit handler that runs before
    multiprocessing's (atexit runs the last registered first) and kills those children (SIGKILL), quietly."""
    if not _EXIT_KILL:
        import atexit
        import multiprocessing.util  # noqa: F401 -- registers multiprocessing's exit function before ours

        atexit.register(_kill_daemon_children)
        _EXIT_KILL.append(True)
    return ignore_sigterm


def _kill_daemon_children() -> None:
    import multiprocessing

    children = [child for child in multiprocessing.active_children() if child.daemon]
    if children:  # torch's SIGCHLD handler would report each one as a worker killed unexpectedly: we are exiting
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
