"""Where a file or report was made: the versions of dise, torch and torchdiffeq, and the device.

Profiles, selectors and bundle manifests carry this under their own top-level header key,
``made_with`` (``PROVENANCE_KEY``); every JSON report carries it as a top-level ``made_with`` key.
It is a record for people (why do two profiles of one model differ? which GPU made this shard?),
never an identity:

- Determinism. Versions and device do not change between two runs on one machine, so the same
  inputs and seed still give byte-identical files there. Nothing timed or random goes in.
- Comparability across machines. Identity checks never read ``made_with``: ``train-selector``
  checks a profile against the model and data by the sha256 in its ``meta``, a selector names its
  profile by that file's sha256, and a bundle hashes each member as written. Code that compares
  two headers (say, to merge profile shards made on different GPUs) compares
  ``without_provenance(header)`` and keeps each shard's ``made_with`` as a record.
- A file read back keeps the ``made_with`` it was written with (None when it was written before
  dise recorded one), and writing it again writes that, not this process's: a selector copied into
  a bundle still says where it was trained, while the manifest says where the bundle was exported.
  Readers accept files without the key; a malformed value reads as None rather than failing.
"""
from __future__ import annotations

import functools
import platform
from importlib import metadata

import torch

from dise_cli import __version__

PROVENANCE_KEY = "made_with"
UNKNOWN_DEVICE = "unknown"     # a writer that was not told where the work ran


def made_with(device: torch.device | str | None = None) -> dict[str, str]:
    """``{"dise", "torch", "torchdiffeq", "device"}`` as strings, e.g. device ``"cpu (AMD EPYC
    7763)"`` or ``"cuda:0 (NVIDIA H200)"``; ``"unknown"`` when ``device`` is None."""
    return {**_versions(), "device": device_name(device)}


def device_name(device: torch.device | str | None) -> str:
    """A device as a person names it: its type and index plus the hardware model where known."""
    if device is None:
        return UNKNOWN_DEVICE
    device = torch.device(device)
    if device.type == "cpu":
        model = _cpu_model()
        return f"cpu ({model})" if model else "cpu"
    if device.type == "cuda":
        index = device.index
        try:
            if index is None:
                index = torch.cuda.current_device()
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        except (RuntimeError, AssertionError, ValueError):      # no driver here: name what was asked for
            return str(device)
    return str(device)


def without_provenance(header: dict) -> dict:
    """``header`` less its ``made_with``: what two files' headers compare on."""
    return {k: v for k, v in header.items() if k != PROVENANCE_KEY}


def read_made_with(value: object) -> dict[str, str] | None:
    """A header's ``made_with`` value as written, or None where it is missing or not a mapping."""
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items()}


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    return {"dise": __version__, "torch": str(torch.__version__), "torchdiffeq": _package_version("torchdiffeq")}


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        try:
            module = __import__(name)
        except ImportError:
            return "not installed"
        return str(getattr(module, "__version__", "unknown"))


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` says; '' if neither."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return (platform.processor() or "").strip()
