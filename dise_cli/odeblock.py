"""Find the ODE block inside a model and split the model around it.

A block is a submodule that holds an ODE function f(t, h) (attribute ``odefunc`` as in
torchdiffeq's examples, ``func``, ``f`` or ``vf`` as in torchdyn, or failing those its only child
whose forward takes (t, h)) and usually a time span (``integration_time``, ``t_span``, ``t``).
dise never edits the user's classes: it swaps the block's forward for its own solver call while
it runs. What runs before the block is the encoder (its output is h(0)); what runs after is the
decoder. When the block sits in ``nn.Sequential`` containers, encoder and decoder are real
modules; otherwise (the parent's forward calls the block) the model runs whole with the swap.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from dise_cli.errors import InputError, UsageError, first_line
from dise_cli.integrators.vector_field import VectorField

FUNC_ATTRS = ("odefunc", "func", "f", "vf")
TIME_ATTRS = ("integration_time", "t_span", "t", "ts", "times", "t_eval")
TIME_ARG_NAMES = ("t", "time", "s", "tau")
DEFAULT_T_SPAN = (0.0, 1.0)

Solve = Callable[[torch.Tensor], torch.Tensor]   # h0 [N, *state] -> states [T, N, *state]


class _Captured(Exception):
    """Raised by the swapped block to stop the model once h(0) is known."""

    def __init__(self, h0: torch.Tensor):
        super().__init__("h0 captured")
        self.h0 = h0


def is_vector_field(module: nn.Module) -> bool:
    """True if ``module.forward`` takes (t, h): two required positional arguments."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]
    return len(required) >= 2


def _takes_time_first(module: nn.Module) -> bool:
    """``forward(t, h)`` rather than, say, a wrapper's ``forward(y0, t)``: the first name says time."""
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] in TIME_ARG_NAMES


def _func_of(module: nn.Module, by_name_only: bool) -> str | None:
    """The attribute under which ``module`` holds an ODE function, if it is a block."""
    for name in FUNC_ATTRS:
        if isinstance(getattr(module, name, None), nn.Module):
            return name
    if by_name_only:
        return None
    fields = [name for name, child in module.named_children() if is_vector_field(child)]
    return fields[0] if len(fields) == 1 else None


def find_blocks(model: nn.Module) -> list[tuple[str, str]]:
    """All (block path, function attribute) pairs, outermost only; named attributes first."""
    for by_name_only in (True, False):
        found = []
        for path, module in model.named_modules():
            if is_vector_field(module) and (path or _takes_time_first(module)):
                continue          # an ODE function (or a layer inside one) is not a block
            attr = _func_of(module, by_name_only)
            if attr is None:
                continue
            inside = any(path == f"{p}.{a}".lstrip(".") or path.startswith(f"{p}.{a}.".lstrip("."))
                         for p, a in found)
            if not inside:
                found.append((path, attr))
        if found:
            return found
    return []


def _time_attr(block: nn.Module) -> tuple[torch.Tensor, str] | None:
    for name in TIME_ATTRS:
        value = getattr(block, name, None)
        if isinstance(value, (list, tuple)) and len(value) >= 2:
            try:
                value = torch.tensor(value, dtype=torch.float64)
            except (TypeError, ValueError):
                continue
        if isinstance(value, torch.Tensor) and value.ndim == 1 and len(value) >= 2 and value.is_floating_point():
            return value.detach().to("cpu", torch.float64), f"attribute {name}"
    return None


@dataclass
class OdeModel:
    """A model split around its ODE block. ``kind``: sequential | nested | root | bare."""

    module: nn.Module
    kind: str
    block_path: str
    func_attr: str
    t_span: torch.Tensor              # [T] float64
    t_span_source: str
    output_format: str = "final"      # what the block returns: final | trajectory | torchdyn
    output_time_major: bool = False   # the model's output puts time first ([T, N, ...])
    encoder: nn.Module | None = None
    decoder: nn.Module | None = None
    field: VectorField | None = None
    h0_shape: tuple[int, ...] = ()

    @property
    def block(self) -> nn.Module:
        return self.module.get_submodule(self.block_path) if self.block_path else self.module

    @property
    def func(self) -> nn.Module:
        return self.module if self.kind == "bare" else getattr(self.block, self.func_attr)

    @property
    def splittable(self) -> bool:
        """Encoder and decoder can run on their own (so h(0) is computed once per batch)."""
        return self.kind != "nested"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """h(0) for inputs ``x``."""
        if self.kind in ("bare", "root"):
            return x
        if self.kind == "sequential":
            return self.encoder(x)
        with self._swapped(_capture):
            try:
                self.module(x)
            except _Captured as cap:
                return cap.h0
        raise InputError(f"the model's forward never called its ODE block '{self.block_path}'")

    def decode(self, ys: torch.Tensor) -> torch.Tensor:
        """Model outputs, batch first, from the block's states ``ys`` [T, N, *state] (splittable kinds)."""
        out = self.block_output(ys)
        if self.kind == "sequential":
            out = self.decoder(out)
        return self.batch_major(out)

    def forward_with(self, x: torch.Tensor, solve: Solve) -> torch.Tensor:
        """Run the whole model with ``solve`` in place of the block; outputs batch first."""
        if self.splittable:
            return self.decode(solve(self.encode(x)))
        with self._swapped(lambda h, *a, **k: self.block_output(solve(h))):
            return self.batch_major(self.module(x))

    def block_output(self, ys: torch.Tensor) -> Any:
        if self.output_format == "final":
            return ys[-1]
        if self.output_format == "torchdyn":
            return self.t_span.to(ys.device, ys.dtype), ys
        return ys

    def batch_major(self, out: Any) -> torch.Tensor:
        if isinstance(out, (tuple, list)):
            out = out[-1]
        return out.transpose(0, 1) if self.output_time_major else out

    def _swapped(self, forward: Callable):
        return _SwapForward(self.block, forward)


def _capture(h: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    raise _Captured(h)


class _SwapForward:
    """Context manager: shadow a module's forward with an instance attribute, then restore it."""

    def __init__(self, module: nn.Module, forward: Callable):
        self.module, self.forward = module, forward

    def __enter__(self):
        self.had = "forward" in self.module.__dict__
        self.old = self.module.__dict__.get("forward")
        self.module.forward = self.forward
        return self

    def __exit__(self, *exc):
        if self.had:
            self.module.forward = self.old
        else:
            del self.module.forward
        return False


def split_model(module: nn.Module, *, ode_block: str | None = None, t_span: torch.Tensor | None = None,
                data_t: torch.Tensor | None = None, model_name: str = "model") -> OdeModel:
    """Locate the block (``ode_block`` overrides) and choose the time grid (``t_span`` overrides)."""
    if ode_block is not None:
        path, attr = _named_block(module, ode_block)
    else:
        blocks = find_blocks(module)
        if len(blocks) > 1:
            names = ", ".join(p or "(the model itself)" for p, _ in blocks)
            raise InputError(f"several ODE blocks found in {model_name}: {names}; choose one with --ode-block")
        if not blocks:
            if is_vector_field(module):
                path, attr = "", ""
            else:
                raise InputError(f"no ODE block found in {model_name}: no submodule holds an ODE function "
                                 f"(attribute {', '.join(FUNC_ATTRS)}) and the model is not f(t, h) itself; "
                                 f"name the block with --ode-block")
        else:
            path, attr = blocks[0]
    kind = _kind(module, path, attr)
    grid, source = _grid(module, path, kind, t_span, data_t)
    model = OdeModel(module=module, kind=kind, block_path=path, func_attr=attr, t_span=grid, t_span_source=source)
    if kind == "bare":
        model.output_format = "trajectory"
        model.output_time_major = True
    if kind == "sequential":
        model.encoder, model.decoder = _sequential_split(module, path)
    return model


def _named_block(module: nn.Module, name: str) -> tuple[str, str]:
    path = "" if name in ("", ".") else name
    try:
        target = module.get_submodule(path)
    except AttributeError:
        names = ", ".join(n for n, _ in module.named_modules() if n) or "none"
        raise UsageError(f"--ode-block: the model has no submodule '{name}'; submodules: {names[:300]}") from None
    attr = _func_of(target, by_name_only=False)
    if attr is not None:
        return path, attr
    if path and is_vector_field(target):      # the user named f itself: its parent is the block
        parent, _, leaf = path.rpartition(".")
        return parent, leaf
    raise UsageError(f"--ode-block: '{name}' holds no ODE function (attribute {', '.join(FUNC_ATTRS)} or a "
                     f"child whose forward takes (t, h))")


def _kind(module: nn.Module, path: str, attr: str) -> str:
    if not attr:
        return "bare"
    if not path:
        return "root"
    parts = path.split(".")
    parent = module
    for part in parts:
        if not isinstance(parent, nn.Sequential):
            return "nested"
        parent = parent.get_submodule(part)
    return "sequential"


def _sequential_split(module: nn.Module, path: str) -> tuple[nn.Sequential, nn.Sequential]:
    before: list[nn.Module] = []
    after: list[nn.Module] = []
    parent = module
    for part in path.split("."):
        names = [n for n, _ in parent.named_children()]
        i = names.index(part)
        children = list(parent.children())
        before.extend(children[:i])
        after[:0] = children[i + 1:]
        parent = children[i]
    return nn.Sequential(*before), nn.Sequential(*after)


def _grid(module: nn.Module, path: str, kind: str, t_span: torch.Tensor | None,
          data_t: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    if t_span is not None:
        return t_span.to(torch.float64), "--t-span"
    if kind != "bare":
        found = _time_attr(module.get_submodule(path) if path else module)
        if found is not None:
            return found
    if data_t is not None:
        return data_t.detach().to("cpu", torch.float64), "data 't'"
    return torch.tensor(DEFAULT_T_SPAN, dtype=torch.float64), "default [0, 1]"


@torch.no_grad()
def probe(model: OdeModel, x: torch.Tensor, data_name: str) -> None:
    """Run the original model on a few samples of ``x`` to learn h(0)'s shape, the block's output
    format and the output layout, then choose how to pass per-row times to f."""
    n_t = len(model.t_span)
    x = x[:3 if n_t != 3 else 4]      # a batch size unlike T, so the batch axis can be told from time
    n = len(x)
    if model.kind == "bare":
        h0 = x
    else:
        seen: dict[str, Any] = {}

        def hook(_mod, args, kwargs, output):
            if "h0" not in seen:
                seen["h0"] = args[0] if args else next(iter(kwargs.values()))
                seen["out"] = output

        handle = model.block.register_forward_hook(hook, with_kwargs=True)
        try:
            if model.kind == "root" and len(_required_args(model.module)) >= 2:
                out = model.module(x, model.t_span.to(x.device, torch.float32))
            else:
                out = model.module(x)
        except Exception as exc:  # noqa: BLE001 - the user's model rejecting the data
            raise InputError(f"the model rejects data '{data_name}' (input shape {tuple(x.shape)}, "
                             f"{x.dtype}): {type(exc).__name__}: {first_line(exc)}") from None
        finally:
            handle.remove()
        if "h0" not in seen:
            raise InputError(f"the model's forward never called its ODE block '{model.block_path}'")
        h0, block_out = seen["h0"], seen["out"]
        model.output_format = _output_format(block_out, h0, n_t)
        model.output_time_major = _time_major_output(out, n, n_t)
    if not isinstance(h0, torch.Tensor) or h0.ndim < 1 or len(h0) != n:
        raise InputError(f"the ODE block's input is not a batch of states (got {type(h0).__name__})")
    model.h0_shape = tuple(h0.shape[1:])
    model.field = VectorField.detect(model.func, h0, model.t_span)


def _required_args(module: nn.Module) -> list[str]:
    params = inspect.signature(module.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]


def _output_format(out: Any, h0: torch.Tensor, n_t: int) -> str:
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], torch.Tensor):
        return "torchdyn"
    if isinstance(out, torch.Tensor):
        if out.shape == h0.shape:
            return "final"
        if out.shape == (n_t, *h0.shape):
            return "trajectory"
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    raise InputError(f"the ODE block returns {shape} for h(0) of shape {tuple(h0.shape)}; dise understands "
                     f"the final state, the trajectory [T, N, ...], or torchdyn's (t, trajectory)")


def _time_major_output(out: Any, n: int, n_t: int) -> bool:
    if isinstance(out, (tuple, list)):
        out = out[-1]
    if not isinstance(out, torch.Tensor) or out.ndim == 0:
        raise InputError(f"the model returns {type(out).__name__}; dise needs a tensor output")
    if out.shape[0] == n:
        return False
    if out.ndim >= 2 and out.shape[0] == n_t and out.shape[1] == n:
        return True
    raise InputError(f"cannot find the batch dimension ({n}) in the model's output of shape {tuple(out.shape)}")
