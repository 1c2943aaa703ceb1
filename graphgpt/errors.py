"""Bad user input: the one exception type for it, and the argument parser every tool uses.

Command-line entry points catch `UserError`, print its message as a single line and exit with
status 2; anything else is a bug in graphgpt and keeps its traceback.
"""
import argparse
import sys


class UserError(Exception):
    """Bad input from the user: a model file, a plan, a data file or a command-line value."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad command-line input as one line, `error: ...`, and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def reported(work, *args) -> int:
    """Run a tool's `work(*args)` and give its exit status: a UserError is one line and 2, Ctrl-C
    is 130, and otherwise `work`'s own status (0 for None)."""
    try:
        return work(*args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
