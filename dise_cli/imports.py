"""Import user code named as ``package.module:attribute`` (``--arch``, ``--data-factory``, ...)."""
from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from dise_cli.errors import UsageError, first_line


@contextmanager
def code_paths(paths: Sequence[str | os.PathLike] = ()) -> Iterator[None]:
    """Make user code importable the way ``python`` run from the working directory finds it,
    plus ``--code-path`` folders (searched first)."""
    extra = [str(Path(p).resolve()) for p in paths] + [os.getcwd()]
    added = [p for p in extra if p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


def import_object(spec: str, flag: str, code_path: Sequence[str | os.PathLike] = ()) -> Any:
    """Return the object named by ``package.module:attr`` (dotted attrs allowed); ``UsageError`` naming ``flag``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{flag}: '{spec}' must look like package.module:name")
    with code_paths(code_path):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise UsageError(f"{flag}: cannot import module '{exc.name}' (from '{spec}'); "
                             f"run from the folder that holds it or add --code-path DIR") from None
        except Exception as exc:  # noqa: BLE001 - user code failing on import
            raise UsageError(f"{flag}: importing '{module_name}' failed: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{flag}: module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def call_factory(spec: str, flag: str, code_path: Sequence[str | os.PathLike] = (), *args: Any) -> Any:
    """Import ``spec`` and call it (with ``args``, e.g. a checkpoint)."""
    factory = import_object(spec, flag, code_path)
    if not callable(factory):
        raise UsageError(f"{flag}: '{spec}' is not callable")
    with code_paths(code_path):
        try:
            return factory(*args)
        except Exception as exc:  # noqa: BLE001 - user code
            call = f"{spec}({'checkpoint' if args else ''})"
            raise UsageError(f"{flag}: calling '{call}' failed: {type(exc).__name__}: {first_line(exc)}") from None
