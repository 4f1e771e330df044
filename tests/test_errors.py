"""The user-error boundary (`data.errors.run_cli`): only UserError and RunFailed become one line; the rest keeps its
traceback."""

from __future__ import annotations

import pytest

from data.errors import RunFailed, UserError, run_cli


def _raising(exc: BaseException):
    def main(argv):
        raise exc

    return main


@pytest.mark.parametrize("exc,code", [(UserError("no such thing; pass --x"), 2), (RunFailed("loss became nan"), 1)])
def test_user_errors_and_failed_runs_are_one_line(exc, code, capsys, monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        run_cli(_raising(exc), [])
    err = capsys.readouterr().err
    assert info.value.code == code and err == f"error: {exc}\n"


@pytest.mark.parametrize("exc", [ValueError("Expected a contiguous tensor"), FileNotFoundError("x.npy"),
                                 KeyError("w")])
def test_programming_errors_keep_their_traceback(exc, monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    with pytest.raises(type(exc)):
        run_cli(_raising(exc), [])


def test_debug_shows_the_traceback_of_a_user_error(monkeypatch):
    monkeypatch.setenv("DEBUG", "1")
    with pytest.raises(UserError):
        run_cli(_raising(UserError("bad")), [])
