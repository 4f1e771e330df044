"""The boundary between a person typing a command and the code (docs/design.md, "The user-error boundary").

Every entry point (`python -m data`, `python -m extract`, `python -m heads`, bench scripts) wraps its `main` with
`run_cli`, which turns exactly these into one `error: ...` line on stderr:
  UserError   bad input from the person at the keyboard (a name, a path, a cache that does not match): exit 2;
  a full disk (ENOSPC, EDQUOT met anywhere): the file that could not be written and what to do, exit 2;
  RunFailed   a run that stopped for a reason that is not its input (e.g. a diverged loss): exit 1.
Ctrl-C prints that sealed work is kept (exit 130; SIGTERM, once data.console.stop_on_sigterm is set: 143). Anything
else is a programming error and keeps its traceback; `DEBUG=1` in the environment shows the traceback of every error.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

from data.console import interrupt_status


class UserError(ValueError):
    """Bad input from the person at the keyboard; the message must say what to do. (A ValueError, so library callers
    that validate with `except ValueError` keep working.)"""


class RunFailed(RuntimeError):
    """A run that stopped for a reason that is not bad input and needs no traceback; the message says what to try."""


def debug_enabled() -> bool:
    return os.environ.get("DEBUG", "") not in ("", "0", "false", "False")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run `main(argv)` and exit with its status; `UserError` and a full disk -> one line, exit 2; `RunFailed` -> one
    line, exit 1."""
    try:
        status = main(argv)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (data.console.stop_on_sigterm): 128 + the signal
        print("interrupted: finished work is kept (sealed shards, finished epochs); rerun the same command to go on",
              file=sys.stderr)
        sys.exit(interrupt_status(exc))
    except (UserError, RunFailed) as exc:
        if debug_enabled():
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UserError) else 1)
    except OSError as exc:
        if debug_enabled() or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"error: the disk is full{where} ({exc.strerror}); free space (or point CACHE_DIR / the output "
              "elsewhere) and rerun the same command", file=sys.stderr)
        sys.exit(2)
    sys.exit(int(status or 0))
