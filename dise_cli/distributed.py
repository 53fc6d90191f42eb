"""Running under ``torchrun``: each process (rank) takes a disjoint shard of the samples on its own
device and rank 0 puts the pieces together and writes the one result.

torchrun (and a SLURM or other launcher that sets the same variables) tells each process ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and where to meet (``MASTER_ADDR``/``MASTER_PORT``); dise joins the
process group on first use: ``cpu:gloo,cuda:nccl`` where it computes on a GPU (``cuda:LOCAL_RANK``;
objects travel over gloo), ``gloo`` on CPUs. ``collect`` is the one exchange: every rank runs its
part, a rank that fails makes every rank fail with one line naming it, and only rank 0 receives the
parts. Only rank 0 prints and writes.

Sharing is engaged by the command line for the commands that share work (``engage``). A program of
the user's own that runs under torchrun and calls the Python API is left alone: its call runs whole in
that process, with no collective that the other ranks would never join. Such a program can engage it
itself, on every rank, for the calls every rank makes.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from dise_cli.errors import EXIT_INTERNAL, DiseError, UsageError, first_line

TIMEOUT = datetime.timedelta(minutes=30)    # how long a rank waits for the others at the exchange


class RankFailed(DiseError):
    """A rank of a torchrun job failed; every rank raises it, rank 0 prints it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def launched() -> bool:
    """Whether this process is one of several that torchrun (or a launcher like it) started."""
    return _int_env("WORLD_SIZE", 1) > 1


def secondary() -> bool:
    """Whether this process is a rank other than 0 (which keeps quiet and writes nothing)."""
    return launched() and _int_env("RANK", 0) != 0


@dataclass
class World:
    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def collect(self, work: Callable[[], Any]) -> list[Any] | None:
        """Run ``work`` on every rank; rank 0 gets every rank's result in rank order, the others None.
        If any rank failed, every rank raises ``RankFailed`` naming the first that did, with its exit code."""
        import torch.distributed as dist
        result = self.everywhere(work)
        parts: list | None = [None] * self.size if self.main else None
        dist.gather_object(result, parts, dst=0)
        return parts

    def everywhere(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on every rank and return this rank's result, once every rank has succeeded; if
        any failed, every rank raises ``RankFailed`` naming the first that did, with its exit code."""
        import torch.distributed as dist
        try:
            result, status = work(), None
        except DiseError as exc:
            result, status = None, (first_line(exc), exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - reported through the exchange, as the command would
            result, status = None, (f"internal error: {type(exc).__name__}: {first_line(exc)}", EXIT_INTERNAL)
        statuses: list = [None] * self.size
        dist.all_gather_object(statuses, status)
        failed = [(rank, s) for rank, s in enumerate(statuses) if s is not None]
        if failed:
            rank, (message, code) = failed[0]
            others = f" (and rank {', '.join(str(r) for r, _ in failed[1:])})" if len(failed) > 1 else ""
            raise RankFailed(f"rank {rank} of {self.size} failed{others}: {message}; nothing was written", code)
        return result


_WORLD: World | None = None
_ENGAGED = False


def engage() -> None:
    """Share the work of the next calls among torchrun's ranks (what ``dise`` does for profile,
    evaluate and run; every rank must make the same calls)."""
    global _ENGAGED
    _ENGAGED = True


def current(device: torch.device) -> World | None:
    """This process's place in a torchrun job (joining the group on first call), or None when it runs
    alone or sharing is not engaged. ``device`` is what the command would use alone: a GPU becomes
    this rank's own."""
    global _WORLD
    if not launched() or not _ENGAGED:
        return None
    if _WORLD is None:
        import torch.distributed as dist
        rank, size, local = _int_env("RANK", 0), _int_env("WORLD_SIZE", 1), _int_env("LOCAL_RANK", 0)
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
                raise UsageError(f"rank {rank}: LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} "
                                f"GPUs; start at most one process per GPU (--nproc-per-node)")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
            backend = "cpu:gloo,cuda:nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=TIMEOUT)
        _WORLD = World(rank=rank, size=size, local_rank=local, device=device)
    return _WORLD


def finish(together: bool) -> None:
    """Leave the process group at the end of a command; ``together``: every rank got here (a command
    that ended normally, or by a failure all ranks share), so wait for the others first: a rank that
    leaves while rank 0 still receives its part would break rank 0's exchange."""
    global _WORLD, _ENGAGED
    _ENGAGED = False
    if _WORLD is not None:
        import torch.distributed as dist
        if dist.is_initialized():
            if together:
                dist.barrier()
            dist.destroy_process_group()
        _WORLD = None


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
