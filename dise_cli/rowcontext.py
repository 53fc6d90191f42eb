"""Per-sample tensors an ODE function reads from outside its state.

People write f as a closure over tensors with one row per sample of the batch: the class labels of a
conditional flow-matching sampler (flow_matching's ``ODESolver.sample(..., label=labels)`` keeps them
in ``model_extras``; torchcfm's notebooks write ``lambda t, x: model(t, x, labels)``), the Hutchinson
noise of a probability-flow likelihood drawn once for the batch (k-diffusion's ``v``), or noise f
draws on its first call and keeps (FFJORD's ``self._e``). dise solves each sample on its own, with
the rows leaving the batch as they finish, so f must see the rows of those tensors that belong to the
rows of the state it is given.

``RowContext.find`` looks for such tensors where f can reach them (its closure, the attributes and
buffers of the module or object it is bound to, the dicts, lists and tuples those hold) and names each
by its path; ``read_by`` keeps those f reads.
``gather`` reads their rows for a batch, to travel with the state as extra columns (the solvers
compact and route them with the state; the norm and the trajectories leave them out), and ``bound``
puts the rows of the columns a call is given in their places while f runs, then puts the batch's
tensors back.
"""
from __future__ import annotations

import contextlib
import math
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from dise_cli.errors import InputError

Step = tuple[str, Any]          # ("cell", name) | ("attr", name) | ("item", key) | ("index", i) | ("self", None)
Path = tuple[Step, ...]
_DEPTH = 6                      # how far from f to look (f -> closure -> object -> attribute -> dict -> item ...)
_MODULE_INTERNALS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training")


def _children(value: Any) -> Iterator[tuple[Step, Any]]:
    """Where a tensor f reads may hide one step further from ``value``: a function's closure, a bound
    method's object, a dict's items, a list's or tuple's elements, an object's attributes (a module's plain
    attributes and buffers, not its parameters, and its submodules)."""
    if isinstance(value, types.MethodType):
        yield ("self", None), value.__self__
        value = value.__func__
    if isinstance(value, types.FunctionType):
        for name, cell in zip(value.__code__.co_freevars, value.__closure__ or ()):
            try:
                yield ("cell", name), cell.cell_contents
            except ValueError:          # an empty cell
                continue
    elif isinstance(value, dict):
        yield from ((("item", k), v) for k, v in value.items() if isinstance(k, (str, int)))
    elif isinstance(value, (list, tuple)):
        yield from ((("index", i), v) for i, v in enumerate(value))
    elif isinstance(value, nn.Module):
        for name, item in vars(value).items():
            if name not in _MODULE_INTERNALS and "hook" not in name:
                yield ("attr", name), item
        # buffers too: a module made per batch keeps its per-sample data in them (torchcde's spline
        # coefficients); a model's own buffers do not grow with the batch, and find() keeps only those that do
        yield from ((("attr", name), buf) for name, buf in value._buffers.items() if buf is not None)
        yield from ((("attr", name), child) for name, child in value.named_children())
    elif _plain_object(value):
        yield from ((("attr", name), item) for name, item in vars(value).items())


def _plain_object(value: Any) -> bool:
    return hasattr(value, "__dict__") and not isinstance(value, (type, types.ModuleType, types.FunctionType,
                                                                  types.MethodType, torch.Tensor))


def _walk(root: Any, found: dict[Path, Any], path: Path = (), seen: set[int] | None = None) -> None:
    seen = set() if seen is None else seen
    if id(root) in seen or len(path) > _DEPTH:
        return
    seen.add(id(root))
    for step, value in _children(root):
        here = path + (step,)
        if isinstance(value, torch.Tensor):
            if not isinstance(value, nn.Parameter):
                found[here] = value
        elif isinstance(value, (types.FunctionType, types.MethodType, dict, list, tuple)) or _plain_object(value):
            _walk(value, found, here, seen)


def reachable_tensors(func: Callable) -> dict[Path, torch.Tensor]:
    """Every non-parameter tensor ``func`` can reach, by its path."""
    found: dict[Path, torch.Tensor] = {}
    _walk(func, found)
    return found


def resolve(func: Callable, path: Path) -> Any:
    value = func
    for kind, key in path:
        if kind == "self":
            value = value.__self__
            continue
        if isinstance(value, types.MethodType):
            value = value.__func__
        if kind == "cell":
            index = value.__code__.co_freevars.index(key)
            value = value.__closure__[index].cell_contents
        elif kind == "attr":
            value = getattr(value, key)
        else:
            value = value[key]
    return value


def _assign(func: Callable, path: Path, new: Any) -> None:
    owner = resolve(func, path[:-1])
    kind, key = path[-1]
    if isinstance(owner, types.MethodType):
        owner = owner.__func__
    if isinstance(owner, tuple):                   # a new tuple in the tuple's place
        _assign(func, path[:-1], owner[:key] + (new,) + owner[key + 1:])
    elif kind == "cell":
        owner.__closure__[owner.__code__.co_freevars.index(key)].cell_contents = new
    elif kind == "attr":
        if isinstance(owner, nn.Module) and key in owner._buffers:
            owner._buffers[key] = new
        else:
            owner.__dict__[key] = new
    else:
        owner[key] = new


def describe(path: Path) -> str:
    """``f.<closure>.model_extras['label']``, for people."""
    text = "f"
    for kind, key in path:
        text += {"self": ".__self__", "cell": f".<{key}>", "attr": f".{key}", "item": f"[{key!r}]",
                 "index": f"[{key}]"}[kind]
    return text


@dataclass(frozen=True)
class RowContext:
    """The per-sample tensors of f: their paths, per-row shapes and dtypes, and how many rows each
    sample has in each (``blocks``: 2 for classifier-free guidance's ``torch.cat([labels, null])``, its
    rows in blocks of N)."""

    paths: tuple[Path, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    blocks: tuple[int, ...] = ()

    def _blocks(self) -> tuple[int, ...]:
        return self.blocks or (1,) * len(self.paths)

    @property
    def width(self) -> int:
        return sum(b * math.prod(s) for b, s in zip(self._blocks(), self.shapes))

    @classmethod
    def find(cls, func: Callable, n: int, exclude: tuple = ()) -> "RowContext | None":
        """The tensors with ``n`` rows (or a few blocks of ``n``) f can reach (not those in ``exclude``,
        such as the grid), or None."""
        mine = {id(t) for t in exclude}
        found = {p: t for p, t in reachable_tensors(func).items() if _blocks_of(t, n) and id(t) not in mine}
        if not found:
            return None
        paths = tuple(sorted(found, key=describe))
        return cls(paths=paths, shapes=tuple(tuple(found[p].shape[1:]) for p in paths),
                   dtypes=tuple(found[p].dtype for p in paths), blocks=tuple(_blocks_of(found[p], n) for p in paths))

    def only(self, paths: frozenset) -> "RowContext | None":
        """The part of this context at ``paths`` (None if nothing is left)."""
        keep = [i for i, p in enumerate(self.paths) if p in paths]
        if not keep:
            return None
        return RowContext(paths=tuple(self.paths[i] for i in keep), shapes=tuple(self.shapes[i] for i in keep),
                          dtypes=tuple(self.dtypes[i] for i in keep),
                          blocks=tuple(self._blocks()[i] for i in keep))

    def under(self, step: Step) -> "RowContext":
        """This context as a function that holds f at ``step`` reaches it (a wrapper's ``("attr", "func")``)."""
        return RowContext(paths=tuple((step, *p) for p in self.paths), shapes=self.shapes, dtypes=self.dtypes,
                          blocks=self.blocks)

    def read_by(self, func: Callable, call: Callable[[], Any]) -> "RowContext | None":
        """The part of this context f reads when ``call()`` runs it (a per-batch cache the model keeps
        where f can reach it, but f never reads, is not context)."""
        watched = {id(resolve(func, p)): p for p in self.paths}
        touched: set = set()

        class _Watch(TorchFunctionMode):
            def __torch_function__(self, fn, types, args=(), kwargs=None):
                for leaf in tree_leaves((args, kwargs or {})):
                    if id(leaf) in watched:
                        touched.add(watched[id(leaf)])
                return fn(*args, **(kwargs or {}))

        with _Watch():
            call()
        return self.only(frozenset(touched))

    def gather(self, func: Callable, n: int, dtype: torch.dtype, device: torch.device,
               first_call: Callable[[], Any], check: bool = True) -> torch.Tensor:
        """``[n, width]``: this batch's context rows as columns of the state's dtype (exactly; ``check``: said
        where not, which torch.export cannot trace). f makes some of them on its first call (FFJORD draws its
        noise then): where a path holds no tensor yet, ``first_call()`` runs f once on the whole batch first."""
        if not all(isinstance(_resolve_or_none(func, p), torch.Tensor) for p in self.paths):
            first_call()
        columns = []
        for path, shape, blocks in zip(self.paths, self.shapes, self._blocks()):
            value = _resolve_or_none(func, path)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (blocks * n, *shape):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise InputError(f"the ODE function's per-sample tensor {describe(path)} is {got} for a batch of {n} "
                                 f"(the reading found {(blocks * n, *shape)}); dise reads one structure per model")
            # a sample's rows side by side: block b's row i is sample i's
            value = value.detach().reshape(blocks, n, -1).movedim(1, 0).reshape(n, -1).to(device)
            column = value.to(dtype)
            if check and not torch.equal(column.to(value.dtype), value):
                raise InputError(f"the ODE function's per-sample tensor {describe(path)} ({value.dtype}) does not fit "
                                 f"the state's {dtype} exactly; dise carries it with the state (keep its values "
                                 f"exact in {dtype}, e.g. class indices below 2**24 for float32)")
            columns.append(column)
        return torch.cat(columns, 1)

    @contextlib.contextmanager
    def bound(self, func: Callable, columns: torch.Tensor) -> Iterator[None]:
        """While f runs on the rows ``columns`` came with, its per-sample tensors hold those rows."""
        saved = [resolve(func, path) for path in self.paths]
        start = 0
        try:
            for path, shape, dtype, blocks in zip(self.paths, self.shapes, self.dtypes, self._blocks()):
                size = blocks * math.prod(shape)
                part = columns[:, start:start + size].reshape(columns.shape[0], blocks, *shape)
                part = part.movedim(1, 0).reshape(blocks * columns.shape[0], *shape)    # back in blocks of N
                _assign(func, path, part.to(dtype))
                start += size
            yield
        finally:
            for path, value in zip(self.paths, saved):
                _assign(func, path, value)

    def describe(self) -> str:
        return ", ".join(f"{describe(p)} {list(s)}" + (f" ({b} rows per sample, in blocks of N)" if b > 1 else "")
                         for p, s, b in zip(self.paths, self.shapes, self._blocks()))


def _resolve_or_none(func: Callable, path: Path) -> Any:
    try:
        return resolve(func, path)
    except (AttributeError, KeyError, IndexError, ValueError):
        return None


MAX_BLOCKS = 4


def _blocks_of(t: torch.Tensor, n: int) -> int:
    """How many rows per sample ``t`` has: 1 for ``n`` rows, ``b`` for ``b`` blocks of ``n`` (up to
    ``MAX_BLOCKS``); 0 for a tensor that is not per sample."""
    if t.ndim < 1 or n < 2 or t.shape[0] % n:
        return 0
    b = t.shape[0] // n
    return b if b <= MAX_BLOCKS else 0
