"""Bad user input: the one exception type for it, and the argument parser every tool uses.

Command-line entry points catch `UserError`, print its message as a single line and exit with
status 2; anything else is a bug in graphgpt and keeps its traceback.
"""
import argparse


class UserError(Exception):
    """Bad input from the user: a model file, a plan, a data file or a command-line value."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad command-line input as one line, `error: ...`, and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
