"""Bad user input: the one exception type for it, and the argument parser every tool uses.

Command-line entry points catch `UserError` (and a PermissionError: REFUSALS), print its message as a
single line and exit with status 2; anything else is a bug in graphgpt and keeps its traceback.
"""
import argparse
import signal
import sys


class UserError(Exception):
    """Bad input from the user: a model file, a plan, a data file or a command-line value."""


# What stops a tool as bad input does, one line and status 2: a UserError, or a path the user's
# permissions keep graphgpt from (a directory it may not search, a file it may not read or write).
REFUSALS = (UserError, PermissionError)


class Signalled(BaseException):
    """SIGTERM (a kill, a scheduler's preemption) or SIGHUP (a closed terminal), raised where the
    tool is so that it unwinds as Ctrl-C does: its temporaries are removed on the way out, and no
    `except Exception` (a model file's) catches it."""

    def __init__(self, sig: int):
        super().__init__(sig)
        self.sig, self.name = sig, signal.Signals(sig).name


TERMINATIONS = (signal.SIGTERM, signal.SIGHUP)


def stop_on_termination() -> None:
    """From now on SIGTERM and SIGHUP raise Signalled wherever the tool is."""
    def stop(sig, frame):
        raise Signalled(sig)
    for sig in TERMINATIONS:
        signal.signal(sig, stop)


def in_words(e: BaseException) -> str:
    """The line a tool prints after `error: ` for one of REFUSALS."""
    if isinstance(e, PermissionError):
        return f"{e.filename}: permission denied" if e.filename else f"permission denied ({e})"
    return str(e)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad command-line input as one line, `error: ...`, and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def require_gpu(self, why: str) -> None:
        """One line and exit status 2 where CuPy sees no NVIDIA GPU; `why` says what needs one."""
        from .runtime import cuda_available
        if not cuda_available():
            self.error(f"no NVIDIA GPU visible to CuPy: {why}")


def reported(work, *args, kept: str = "") -> int:
    """Run a tool's `work(*args)` and give its exit status: a UserError is one line and 2, Ctrl-C
    is 130, SIGTERM or SIGHUP (once stop_on_termination is in force) 128 + the signal, its line
    followed by `kept` (what the tool left as it was), and otherwise `work`'s own status (0 for None)."""
    try:
        return _signals_unmasked(work, *args)
    except REFUSALS as e:
        print(f"error: {in_words(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Signalled as e:
        print(f"terminated by {e.name}{kept}", file=sys.stderr)
        return 128 + e.sig


def _signals_unmasked(work, *args) -> int:
    """work(*args), where Ctrl-C or a termination signal stays itself when, on its way out, other
    code raised an error over it: a signal's exception can arrive inside threading's own lock
    handling (a worker pool's result being awaited), whose clean-up then fails with a RuntimeError
    of its own. The signal is what happened, and what the tool reports."""
    try:
        return work(*args) or 0
    except Exception as e:
        under = e.__context__
        while under is not None and not _is_signal(under):
            under = under.__context__
        if under is None:
            raise
        raise under from None


def _is_signal(e: BaseException) -> bool:
    """Ctrl-C's KeyboardInterrupt, or the BaseException a tool raises for SIGTERM or SIGHUP: not an
    error, and not the exits a generator or sys.exit make."""
    return not isinstance(e, (Exception, GeneratorExit, SystemExit))
