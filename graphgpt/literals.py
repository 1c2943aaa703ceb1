"""What graphgpt reads as an integer or a number, from --set's values and from command-line flags
alike: Python's int() and float() take more (1_0, +1, " 1", other scripts' digits), which a typo
can turn into a value nobody meant."""
from __future__ import annotations

import argparse
import re

# ASCII digits; a leading '-' is read, so that a negative count is refused by its range check.
INTEGER = re.compile(r"-?[0-9]+")
# A decimal or scientific literal, or a word float() reads (nan, inf, infinity), which the range
# checks then refuse as not finite.
NUMBER = re.compile(r"[-+]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|nan|inf|infinity)", re.IGNORECASE)


def typed(text: str, kind: type):
    """text as a value of kind (int or float; any other kind takes the text as it is), or None
    where it is not one."""
    if kind not in (int, float):
        return text
    if not (INTEGER if kind is int else NUMBER).fullmatch(text):
        return None
    try:
        return kind(text)
    except ValueError:  # more digits than int() converts (sys.set_int_max_str_digits)
        return None


def integer(text: str) -> int:
    """An argparse type: an integer flag's value, ASCII digits only."""
    value = typed(text, int)
    if value is None:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an integer (digits only)")
    return value


def number(text: str) -> float:
    """An argparse type: a number flag's value, a decimal or scientific literal."""
    value = typed(text, float)
    if value is None:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a number")
    return value


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")
