"""Errors a user can fix get one class, so every interface can print them as one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LoopmlError(Exception):
    """A problem with the user's input (data, config, arguments). CLI exit code 2."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest valid choice, or '' when none is close."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
