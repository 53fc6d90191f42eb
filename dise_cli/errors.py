"""The DiseError family: every error a user can cause or meet, each with its exit code (DESIGN.md)."""
from __future__ import annotations

EXIT_OK = 0
EXIT_GATE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class DiseError(Exception):
    """Base class: a message for one stderr line and the exit code that goes with it."""

    exit_code: int = EXIT_INTERNAL


class UsageError(DiseError):
    """A flag or option has a bad value (exit 2). The message names the flag."""

    exit_code = EXIT_USAGE


class InputError(DiseError):
    """A file or its content is unusable (exit 2). The message names the file and key."""

    exit_code = EXIT_USAGE


class GateFailed(DiseError):
    """A quality gate (--max-accuracy-drop, ...) was not met (exit 1)."""

    exit_code = EXIT_GATE


class NumericsError(DiseError):
    """A failure inside dise or its numerics that is not the user's input (exit 3)."""

    exit_code = EXIT_INTERNAL


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, for one-line error reports (cut at ``limit``
    characters, with '...' saying so)."""
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    return text[0] if len(text[0]) <= limit else text[0][:limit].rstrip() + "..."
