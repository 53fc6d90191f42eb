"""File helpers shared by every command: checked input paths, sha256, atomic writes."""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dise_cli.errors import InputError, UsageError


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is a readable, non-empty file; else ``InputError`` naming it."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} '{p}' does not exist")
    if p.is_dir():
        raise InputError(f"{what} '{p}' is a directory, not a file")
    if p.stat().st_size == 0:
        raise InputError(f"{what} '{p}' is empty")
    return p


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def writable_target(path: str | os.PathLike, flag: str) -> Path:
    """Check, before any work, that ``path`` can be written: its folder exists and is writable."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{flag}: folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag}: folder '{folder}' is not writable")
    if p.is_dir():
        raise UsageError(f"{flag}: '{p}' is a directory")
    return p


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it over ``path`` only if the block succeeds."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_safetensors(path: str | os.PathLike, what: str) -> tuple[dict[str, str], dict]:
    """The metadata and tensors of a safetensors file; ``InputError`` naming ``what`` if unreadable."""
    from safetensors import SafetensorError, safe_open

    from dise_cli.errors import first_line
    p = existing_file(path, what)
    try:
        with safe_open(str(p), framework="pt") as fh:
            return dict(fh.metadata() or {}), {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{what} '{p}' is not a readable safetensors file ({first_line(exc)})") from None
