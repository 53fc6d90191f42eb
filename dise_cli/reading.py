"""Read a model by its solve: run it once on a few samples while watching it call its solver, and
decide what is encoder, solve and decoder.

``read_model`` records every torchdiffeq / torchdyn call the forward makes (f, the initial state as
passed, the grid, method, tolerances, options; the module that made it; the NFE it took), picks the
solve to route (``--solve N``, ``--ode-block``, else the most expensive adaptive one) and returns a
``TracedModel``. A model that calls no solver is either a vector field itself (``BareField``) or
has a solve dise cannot see; then the block is found by its attributes (``AttributeModel``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from dise_cli.errors import InputError, UsageError, first_line
from dise_cli.integrators.tolerances import per_sample_tolerance
from dise_cli.integrators.vector_field import VectorField, detect_arg_order
from dise_cli.odeblock import (DEFAULT_SOURCE, DEFAULT_T_SPAN, is_vector_field, read_by_attributes, required_args, sequential_kind,
                               sequential_split, time_major_output)
from dise_cli.inputs import InputJoin
from dise_cli.loopform import LoopForm
from dise_cli.odemodel import (EXTRACTIONS, BareField, OdeModel, OwnSolver, SolveInfo, TracedModel, call_once,
                               extract, model_call_args, output_note, pack_call)
from dise_cli.rowcontext import RowContext
from dise_cli.solvecalls import CallNumbers, SolveCall, intercept
from dise_cli.states import StateLayout, same_structure


class _Counting(nn.Module):
    """f with a call counter (a module, so that odeint_adjoint still finds f's parameters)."""

    def __init__(self, func):
        super().__init__()
        if isinstance(func, nn.Module):
            self.inner = func
        else:
            self.__dict__["_fn"] = func
        self.count = 0

    def forward(self, *args, **kwargs):
        self._tick()
        fn = self.inner if "inner" in self._modules else self.__dict__["_fn"]
        return fn(*args, **kwargs)

    @torch.compiler.disable
    def _tick(self) -> None:
        # outside torch.compile: a solve the model compiled would otherwise guard on the count and
        # recompile at every call, warning on stderr once it gives up
        self.count += 1


@dataclass
class _Seen:
    call: SolveCall
    nfe: int
    block: nn.Module
    block_path: str
    block_args: tuple
    result: Any
    block_output: Any = None


@dataclass
class _Recorder:
    """Handler that lets every call run as written, counting its NFE and noting which module of the
    model made it, and global module hooks that keep the stack of running modules."""

    root: nn.Module
    seen: list[_Seen] = field(default_factory=list)
    stack: list = field(default_factory=list)

    def __post_init__(self):
        self.numbers = CallNumbers(self.root)
        self.paths = self.numbers.paths

    def pre(self, module, args):
        self.stack.append((module, args))

    def post(self, module, args, output):
        while self.stack:
            top, _ = self.stack.pop()
            if top is module:
                break
        for s in self.seen:
            if s.block is module and s.block_output is None:
                s.block_output = output

    def __call__(self, call: SolveCall, run_original) -> Any:
        self.numbers.number(call)
        block, args = self.root, ()
        for module, module_args in reversed(self.stack):
            if id(module) in self.paths:
                block, args = module, module_args
                break
        counting = _Counting(call.func)
        result = run_original(counting)
        self.seen.append(_Seen(call=call, nfe=counting.count, block=block, block_path=self.paths.get(id(block), ""),
                               block_args=args, result=result))
        return result

    def run(self, args: tuple) -> Any:
        pre = register_module_forward_pre_hook(lambda m, a: self.pre(m, a))
        post = register_module_forward_hook(lambda m, a, o: self.post(m, a, o), always_call=True)
        try:
            with intercept(self, self.root):
                return self.root(*args)
        finally:
            pre.remove()
            post.remove()


def read_model(module: nn.Module, x: torch.Tensor, *, data_name: str = "data", solve: int | None = None,
               ode_block: str | None = None, t_span: torch.Tensor | None = None, data_t: torch.Tensor | None = None,
               model_name: str = "model", batch: int = 3, join: InputJoin | None = None,
               output_key: str | None = None, time_scale: float | None = None, loop_form: LoopForm | None = None,
               _context: frozenset | None = None) -> OdeModel:
    """Read ``module`` on a few rows of ``x``: which solve it runs, and how to split it around it.
    (``join``: ``x`` packs the several inputs the forward takes; ``time_scale``: a hand-written loop
    calls f at this many times the time it steps on (``dise_cli.loops``); ``loop_form``: its f is a denoiser,
    its start and last step (``dise_cli.loopform``); ``_context``: the paths of
    f's per-sample tensors seen with fewer rows, for the re-read that keeps only those that grew with
    the batch.)"""
    grid, grid_source = _grid(t_span, data_t)
    takes_grid = len(required_args(module)) >= (len(join) if join is not None else 1) + 1
    rows = x[:batch]
    recorder = _Recorder(module)
    args = model_call_args(rows, join, grid if takes_grid else None)
    try:
        with torch.no_grad():
            out = recorder.run(args)
        failure = None
    except Exception as exc:  # noqa: BLE001 - the user's model rejecting the data, or a bare f called wrongly
        out, failure = None, exc
    if recorder.seen:
        if failure is not None:
            raise _rejects(data_name, rows, failure, join)
        if t_span is not None and not takes_grid:
            raise UsageError(f"--t-span: {model_name} passes its own time grid to its solver "
                             f"(t = {_short(recorder.seen[0].call.t)}); dise solves on that grid")
        chosen = _choose(recorder.seen, solve, ode_block, model_name)
        n_t = len(chosen.call.t)
        axes = _batch_axes(chosen.call.y0, len(rows))
        # another batch size tells apart: several axes of its size, and a state whose first axis holds
        # blocks of it (CFG's cat([z, z])) beside another axis of its size (4 latent channels, 4 rows)
        ambiguous = n_t == len(rows) or len(axes) > 1 or (0 not in axes and axes and
                                                          _blocks(chosen.call.y0, len(rows)) > 1)
        candidates = _context_candidates(chosen.call, len(rows))
        unconfirmed = _context is None and candidates is not None
        if (ambiguous or unconfirmed) and len(x) > len(rows):
            # a batch size unlike T and the state's sizes tells the axes apart, and a tensor f reads that
            # grows with the batch is per sample (a fixed one that happened to match does not)
            return read_model(module, x, data_name=data_name, solve=solve, ode_block=ode_block, t_span=t_span,
                              data_t=data_t, model_name=model_name, batch=len(rows) + 1, join=join,
                              output_key=output_key, time_scale=time_scale, loop_form=loop_form,
                              _context=frozenset(candidates.paths) if candidates is not None else _context)
        context = candidates if _context is None or candidates is None else candidates.only(_context)
        model = _traced(module, rows, recorder, chosen, out, takes_grid, context, join, output_key)
        if takes_grid:
            model.input_grid = grid             # the model's time argument, which its solve may not integrate over
        model.t_span_source = f"the model's solver call{f', given it as {grid_source}' if takes_grid else ''}"
        return model
    if join is not None and failure is not None:
        raise _rejects(data_name, rows, failure, join)
    if join is None and is_vector_field(module):
        try:
            model = _bare(module, rows, grid)
        except InputError as exc:
            # a forward of two arguments that is no ODE function: a model of several inputs, named by --x-key
            names = required_args(module)
            raise InputError(f"{exc}; dise read {model_name} as an ODE function f({', '.join(names)}) (it calls no "
                             f"solver dise can see with one input): if those are inputs, name their data keys, "
                             f"--x-key {','.join(names)}") from None
        model.t_span_source = grid_source
        return model
    if failure is not None:
        raise _rejects(data_name, rows, failure)
    # one more row tells the loop's per-sample conditioning of f from a fixed argument of the probe's size
    more = model_call_args(x[:len(rows) + 1], join, grid if takes_grid else None) if len(x) > len(rows) else None
    with torch.no_grad():
        return read_by_attributes(module, rows, t_span, data_t, ode_block, model_name, args, output_key, time_scale,
                                  loop_form, join=join, more_args=more)


def _grid(t_span: torch.Tensor | None, data_t: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    if t_span is not None:
        return t_span.to(torch.float64), "--t-span"
    if data_t is not None and data_t.ndim == 2:       # a grid per sample: the first sample's stands for all
        return data_t[0].detach().to("cpu", torch.float64), "data 't', a grid per sample"
    if data_t is not None:
        return data_t.detach().to("cpu", torch.float64), "data 't'"
    return torch.tensor(DEFAULT_T_SPAN, dtype=torch.float64), DEFAULT_SOURCE


def _rejects(data_name: str, x: torch.Tensor, exc: Exception, join: InputJoin | None = None) -> InputError:
    what = f"inputs {join.describe(x)}" if join is not None else f"input shape {tuple(x.shape)}, {x.dtype}"
    return InputError(f"the model rejects data '{data_name}' ({what}): {type(exc).__name__}: {first_line(exc)}")


def _short(t: torch.Tensor) -> str:
    values = [round(float(v), 6) for v in t.detach().flatten()]
    if len(values) <= 6:
        return str(values)
    return f"[{values[0]}, {values[1]}, ..., {values[-1]}] ({len(values)} points)"


def _choose(seen: list[_Seen], solve: int | None, ode_block: str | None, model_name: str) -> _Seen:
    """The solve to route: ``--solve N``, else the one made from ``--ode-block``, else the most expensive
    adaptive one (the most expensive of all where none is adaptive)."""
    if solve is not None:
        if not 0 <= solve < len(seen):
            raise UsageError(f"--solve: {model_name} makes {len(seen)} solver call(s) per forward "
                             f"(0 to {len(seen) - 1}; dise inspect lists them); got {solve}")
        return seen[solve]
    if ode_block is not None:
        path = "" if ode_block in ("", ".") else ode_block
        matches = [s for s in seen if s.block_path == path or s.block_path.startswith(path + ".")
                   or _func_path(s) == path]
        if not matches:
            blocks = sorted({s.block_path or "(the model itself)" for s in seen})
            raise UsageError(f"--ode-block: no solve of {model_name} is made from '{ode_block}'; the solves are made "
                             f"from {', '.join(blocks)}")
        seen = matches
    return max(seen, key=lambda s: (s.call.library != "scipy", _adaptive(s.call), s.nfe, -s.call.index))


def _adaptive(call: SolveCall) -> bool:
    """An adaptive solve: its cost depends on the input, so routing it can pay. A fixed-step solve's cost is
    set by its grid (Rubanova's ODE-RNN encoder takes Euler steps between observations)."""
    from dise_cli.integrators.emulation import TORCHDIFFEQ_FIXED, TORCHDYN_FIXED
    fixed = TORCHDYN_FIXED if call.library == "torchdyn" else TORCHDIFFEQ_FIXED
    return call.method not in fixed


def _func_path(s: _Seen) -> str | None:
    func = s.call.func
    owner = func if isinstance(func, nn.Module) else getattr(func, "__self__", None)
    return None if owner is None else _path_of(s, owner)


def _path_of(s: _Seen, module: Any) -> str | None:
    for name, m in s.block.named_modules():
        if m is module:
            return f"{s.block_path}.{name}".strip(".")
    return None


def _context_candidates(call: SolveCall, n: int) -> RowContext | None:
    """The tensors with ``n`` rows the call's f reaches (not its grid; the initial state, where f closes
    over it, is per-sample context like any other)."""
    return RowContext.find(call.func, n, exclude=(call.t,))


def _traced(module: nn.Module, x: torch.Tensor, recorder: _Recorder, chosen: _Seen, out: Any,
            takes_grid: bool, context: RowContext | None, join: InputJoin | None,
            output_key: str | None = None) -> TracedModel:
    call = chosen.call
    if call.library == "scipy":
        raise InputError(f"the model's solve ({call.where}) is scipy.integrate.solve_ivp ({call.method}) on a numpy "
                         f"state, which dise cannot answer sample by sample; write it with torchdiffeq's odeint(f, x, "
                         f"t, method='dopri5', rtol=..., atol=...) on the batch tensor (RK45's Dormand-Prince pair; "
                         f"torchdiffeq's steps may pass the end time before interpolating back, so f must be finite a "
                         f"little beyond it), and dise routes it")
    if call.unsupported:
        names = ", ".join(call.unsupported)
        why = (" (the solve ends where the event fires, which it finds as it goes; dise routes solves over a "
               "grid it knows)" if "event_fn" in call.unsupported else "")
        other = ("; route another solve with --solve (dise inspect lists them)" if len(recorder.seen) > 1
                 else "; dise cannot route this model")
        raise InputError(f"the model's solve ({call.where}) passes {names} to {call.library}'s {call.entry}, which dise "
                         f"cannot answer per sample{why}{other}")
    what = f"the state the model passes to {call.entry} ({call.where})"
    n = len(x)
    StateLayout.of(call.y0, what)                 # a tensor or a tuple of tensors, else a clear line
    axes = _batch_axes(call.y0, n)
    blocks = _blocks(call.y0, n) if 0 not in axes else 1
    if blocks > 1 and axes:
        blocks = 1          # still both with no more rows to read: the axis of the batch's size, as before
    if not axes and blocks == 1:
        hint = "; route another solve with --solve (dise inspect lists them)" if len(recorder.seen) > 1 else ""
        raise InputError(f"the model's solve ({call.where}) integrates a state of shape {_shape(call.y0)} for {n} "
                         f"inputs: dise routes solves with one state per input, its samples on one axis{hint}")
    # several axes of the batch's size only with data too small to read again with more rows: the
    # samples first, as nearly every model keeps them
    layout = (StateLayout.of(call.y0, what, blocks=blocks) if blocks > 1 else
              StateLayout.of(call.y0, what, batch_axis=0 if 0 in axes else axes[0]))
    if context is not None:
        context = context.read_by(call.func, lambda: call_once(call))
    if context is not None:
        layout = layout.with_context(context.width)
    h0 = pack_call(layout, context, call)
    grid = call.t.detach().to("cpu", torch.float64)
    # a forward of several arguments runs whole: dise passes them as the model takes them
    kind, extraction, encoder, decoder = _split(module, x, chosen, out, takes_grid or join is not None)
    with torch.no_grad():
        field = VectorField.detect(call.func, h0, grid, layout, context=context)
    model = TracedModel(module, field, grid, layout, key=call.key, kind=kind, extraction=extraction,
                        encoder=encoder, decoder=decoder)
    model.model_takes_grid = takes_grid
    model.join = join
    model.output_key, model.output_note = output_key, output_note(out, output_key, n)
    model.output_time_major = time_major_output(out, n, output_key)
    model.block_path = chosen.block_path
    model.own = OwnSolver(library=call.library, method=call.method, rtol=_number(call.rtol), atol=_number(call.atol),
                          options=dict(call.options),
                          sample_rtol=per_sample_tolerance(call.rtol, call.y0, layout),
                          sample_atol=per_sample_tolerance(call.atol, call.y0, layout))
    model.func_description, model.func_modules = _describe_func(chosen, h0, grid, layout)
    model.func_class = _describe_func_short(call.func)
    model.solves = [_info(s, recorder) for s in recorder.seen]
    model.target = chosen.call.index
    return model


def _split(module: nn.Module, x: torch.Tensor, chosen: _Seen, out: Any,
           takes_grid: bool) -> tuple[str, str, nn.Module | None, nn.Module | None]:
    """``sequential``, ``root`` or ``whole``, how the block's output derives from the solver's result,
    and the encoder / decoder modules of a sequential split."""
    call = chosen.call
    if chosen.block is module:
        inputs, output = (x,), out
    else:
        inputs, output = chosen.block_args, chosen.block_output
    takes_state = bool(inputs) and (inputs[0] is call.y0 or same_structure(inputs[0], call.y0))
    extraction = next((how for how in EXTRACTIONS if _extracts(chosen.result, how, output)), None)
    if not takes_state or extraction is None:
        return "whole", "returned", None, None
    if chosen.block is module:
        return ("root", extraction, None, None) if not takes_grid else ("whole", "returned", None, None)
    if sequential_kind(module, chosen.block_path):
        encoder, decoder = sequential_split(module, chosen.block_path)
        return "sequential", extraction, encoder, decoder
    return "whole", "returned", None, None


def _extracts(result: Any, how: str, output: Any) -> bool:
    try:
        return same_structure(extract(result, how), output) or extract(result, how) is output
    except Exception:  # noqa: BLE001 - an extraction that does not apply to this result
        return False


def _batch_axes(y0: Any, n: int) -> list[int]:
    """The axes of a solve's initial state that can hold the ``n`` inputs: axis 0 of a tuple's
    components; any axis of size ``n`` of a tensor (Rubanova's latent ODE keeps them on axis 1)."""
    if isinstance(y0, (tuple, list)):
        return [0] if y0 and all(isinstance(c, torch.Tensor) and c.ndim and len(c) == n for c in y0) else []
    if not isinstance(y0, torch.Tensor):
        return []
    return [axis for axis, size in enumerate(y0.shape) if size == n]


MAX_BLOCKS = 4      # CFG by batch doubling doubles the state; a few more copies are allowed, no more


def _blocks(y0: Any, n: int) -> int:
    """For a tensor state of ``b * n`` rows (``1 < b <= MAX_BLOCKS``): ``b``, its samples in ``b`` blocks
    of ``n`` (``torch.cat([z, z])`` for classifier-free guidance). 1 otherwise. The fidelity check
    compares the model with dise's reading of it, so another arrangement of the rows is refused there."""
    if not isinstance(y0, torch.Tensor) or y0.ndim < 1 or n < 1 or y0.shape[0] % n:
        return 1
    b = y0.shape[0] // n
    return b if 1 < b <= MAX_BLOCKS else 1


def _shape(y0: Any) -> str:
    if isinstance(y0, (tuple, list)):
        return "(" + ", ".join(_shape(c) for c in y0) + ")"
    return str(tuple(y0.shape)) if isinstance(y0, torch.Tensor) else type(y0).__name__


def _number(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return value


def _describe_func(chosen: _Seen, h0: torch.Tensor, grid: torch.Tensor,
                   layout: StateLayout) -> tuple[str, list[nn.Module]]:
    """What f is, for people, and the modules it calls (their parameters are f's)."""
    func = chosen.call.func
    called: list[nn.Module] = []
    depth = [0]

    def pre(m, a):
        if depth[0] == 0:
            called.append(m)
        depth[0] += 1

    def post(m, a, o):
        depth[0] -= 1

    handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post, always_call=True)]
    try:
        with torch.no_grad():
            VectorField(func, "loop", layout)(grid[0].to(h0.device, h0.dtype), h0[:2])
    except Exception:  # noqa: BLE001 - the description is for people; detection already ran f
        pass
    finally:
        for h in handles:
            h.remove()
    unique: list[nn.Module] = []
    for m in called:
        if all(m is not u for u in unique):
            unique.append(m)
    path = _func_path(chosen)
    if isinstance(func, nn.Module):
        text = path or type(func).__name__
    elif getattr(func, "__self__", None) is not None:
        text = f"{path or type(func.__self__).__name__}.{func.__name__}"
    else:
        code = getattr(func, "__code__", None)
        where = f" at {os.path.basename(code.co_filename)}:{code.co_firstlineno}" if code is not None else ""
        names = [_path_of(chosen, m) or type(m).__name__ for m in unique]
        text = f"{getattr(func, '__qualname__', type(func).__name__)}{where}" + (
            f", calling {', '.join(names)}" if names else "")
    return text, unique


def _info(s: _Seen, recorder: _Recorder) -> SolveInfo:
    call = s.call
    try:
        state = StateLayout.of(call.y0).describe()
    except InputError:
        state = type(call.y0).__name__
    return SolveInfo(index=call.index, site=call.site, where=call.where, occurrence=call.occurrence,
                     func_path=call.func_path,
                     library=call.library, entry=call.entry, method=call.method, rtol=plain(call.rtol),
                     atol=plain(call.atol), options={k: plain(v) for k, v in call.options.items()}, state=state,
                     t=[float(v) for v in call.t.detach().flatten()], nfe=s.nfe,
                     block=s.block_path or "(the model itself)", func=_describe_func_short(call.func))


def _describe_func_short(func: Any) -> str:
    if isinstance(func, nn.Module):
        return type(func).__name__
    owner = getattr(func, "__self__", None)
    if owner is not None:
        return f"{type(owner).__name__}.{getattr(func, '__name__', '')}"
    return getattr(func, "__qualname__", type(func).__name__)


def plain(value: Any) -> Any:
    """A solver option or tolerance as JSON can hold it, lists and tensors in full (tables shorten
    them): a one-element tensor as a float, other tensors as nested lists, any other object by its
    repr (cut to 60 characters)."""
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 else value.detach().cpu().tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return repr(value)[:60]


def _bare(module: nn.Module, x: torch.Tensor, grid: torch.Tensor) -> BareField:
    layout = StateLayout.of(x, "the data's initial states")
    with torch.no_grad():
        order = detect_arg_order(module, x, float(grid[0]), layout)
        field = VectorField.detect(module, x, grid, layout, order=order)
    model = BareField(module, field, grid, layout)
    model.func_description = "(the model itself)"
    model.func_class = type(module).__name__
    model.func_modules = [module]
    return model
