"""Parsing JSON that a user or a crash may have damaged.

Besides the syntax errors it reports as json.JSONDecodeError, json.loads fails on two inputs with
other exceptions: arrays or objects nested thousands deep (`[[[[...`, a RecursionError) and an
integer of more digits than int() converts (sys.get_int_max_str_digits(), a bare ValueError). Here
both are json.JSONDecodeError too (a ValueError), the damage every reader already handles.
"""
from __future__ import annotations

import json
import re
import sys


def loads(text: str | bytes) -> object:
    """json.loads(text), with every way of not being JSON it can read a json.JSONDecodeError
    placed at its cause; bytes that are not UTF-8 stay a UnicodeDecodeError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise _undecodable(text, "arrays or objects nested too deeply", r"[\[{]") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError:
        raise _undecodable(text, "an integer of more digits than Python converts",
                           rf"\d{{{sys.get_int_max_str_digits() + 1}}}") from None


def _undecodable(text: str | bytes, why: str, cause: str) -> json.JSONDecodeError:
    doc = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    found = re.search(cause, doc)
    return json.JSONDecodeError(why, doc, found.start() if found else 0)
