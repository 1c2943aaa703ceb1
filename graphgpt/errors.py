"""The one exception type for bad user input.

Command-line entry points catch `UserError`, print its message as a single line and exit with
status 2; anything else is a bug in graphgpt and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a model file, a plan, a data file or a command-line value."""
