"""The boundary between a person typing a command and the code: one-line errors, no tracebacks.

Every entry point (`python -m data`, `python -m extract`, `python -m heads`, bench scripts) wraps its `main` with
`run_cli`. A `UserError` (or any `ValueError`/`FileNotFoundError` raised while validating input) is printed as a single
`error: ...` line on stderr with exit status 2; `DEBUG=1` in the environment shows the full traceback instead. So is
a full disk (ENOSPC, EDQUOT) met anywhere: it names the file that could not be written.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the person at the keyboard; the message must say what to do."""


def debug_enabled() -> bool:
    return os.environ.get("DEBUG", "") not in ("", "0", "false", "False")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run `main(argv)` and exit with its status; user errors become one line on stderr (exit 2)."""
    try:
        status = main(argv)
    except KeyboardInterrupt:
        print("interrupted: sealed work is kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except (UserError, ValueError, FileNotFoundError, PermissionError) as exc:
        if debug_enabled():
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if debug_enabled() or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"error: the disk is full{where} ({exc.strerror}); free space (or point CACHE_DIR / the output "
              "elsewhere) and rerun the same command", file=sys.stderr)
        sys.exit(2)
    sys.exit(int(status or 0))
