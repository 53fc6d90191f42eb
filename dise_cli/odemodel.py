"""A model read by its solve: everything before the solve is the encoder, everything after it the
decoder, and dise answers the solve with its own integrators.

``Problem`` is one batch's solve as dise sees it (f with its calling conventions, the packed initial
state, the grid). ``OdeModel`` is the interface every command uses:

- ``encode(x)`` -> the ``Problem`` the model poses for inputs ``x``;
- ``forward_with(x, solve)`` -> the model's outputs with the solve answered by ``solve(problem)``;
- ``decode(problem, ys)`` -> outputs from a solution, for models whose decoder runs on its own
  (``splittable``), so that one encoding serves every candidate integrator.

Three readings implement it (``dise_cli.reading`` chooses): ``TracedModel`` (dise watched the model
call torchdiffeq or torchdyn), ``AttributeModel`` (a solve dise cannot see, e.g. a hand-written
loop, found by the block's attributes) and ``BareField`` (the saved module is f itself).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from dise_cli.conditioning import Call, CallShape, Conditioned, first_calls
from dise_cli.errors import InputError
from dise_cli.inputs import InputJoin
from dise_cli.loopform import LoopForm, loop_func
from dise_cli.integrators.vector_field import VectorField
from dise_cli.rowcontext import RowContext
from dise_cli.solvecalls import CallNumbers, SolveCall, intercept
from dise_cli.states import StateLayout


@dataclass
class Problem:
    """One batch's solve: ``field`` for this call's f, ``h0`` packed ``[N, ...]``, grid ``t`` float64:
    ``[T]`` for the batch, or ``[N, T]``, each sample its own."""

    field: VectorField
    h0: torch.Tensor
    t: torch.Tensor
    call: SolveCall | None = None      # the model's call this problem answers (traced models)

    def grid_of(self, rows: torch.Tensor) -> torch.Tensor:
        """The grid of ``rows`` of the batch (the batch's grid, or theirs)."""
        return self.t[rows] if self.t.ndim == 2 else self.t


Solve = Callable[[Problem], torch.Tensor]     # problem -> packed states [T, N, ...]


@dataclass
class SolveInfo:
    """What the probe saw of one solver call (``dise inspect`` lists them)."""

    index: int
    site: str
    where: str
    occurrence: int
    library: str
    entry: str
    method: str
    rtol: Any
    atol: Any
    options: dict
    state: str             # the state's shape, e.g. "(N, 64, 6, 6)" or "((N, 2), (N, 1))"
    t: list[float]
    nfe: int
    block: str             # the innermost module of the model running when the call was made
    func: str              # what f is, for people

    func_path: str | None = ""


@dataclass
class OwnSolver:
    """The solver settings the model's own call asked for (library defaults filled in)."""

    library: str
    method: str
    rtol: Any
    atol: Any
    options: dict = field(default_factory=dict)
    # rtol and atol for one sample, as the solver applies them to the model's state (a number, or one
    # per element of a sample's state); None where they cannot be read that way
    sample_rtol: Any = None
    sample_atol: Any = None
    note: str = ""             # how dise knows it, where it did not see the call (a loop it identified)

    @property
    def is_loop(self) -> bool:
        """A hand-written loop dise identified by its calls of f (``dise_cli.loops``), not a library call."""
        return self.library == "loop"


class OdeModel:
    """Common state of every reading. Subclasses implement encode / decode / forward_with."""

    how: str = ""              # traced | attributes | bare
    kind: str = ""             # sequential | root | whole | nested | bare
    splittable: bool = True

    def __init__(self, module: nn.Module, field: VectorField, t_span: torch.Tensor, layout: StateLayout):
        self.module = module
        self.field = field                   # the probe's f with its conventions
        self.t_span = t_span                 # the probe's grid, float64 on the CPU
        self.layout = layout
        self.output_time_major = False       # the model's own output puts time first
        self.own: OwnSolver | None = None
        self.time_scale: float | None = None  # a loop calls f at this many times the time it steps on
        self.loop_form: LoopForm | None = None   # a loop's denoiser f, start and last step (dise_cli.loopform)
        self.block_path = ""
        self.func_description = ""           # where f is: its module path, or the function that is f
        self.func_class = ""
        self.func_modules: list[nn.Module] = []
        self.solves: list[SolveInfo] = []
        self.target = 0                      # index into ``solves`` of the routed solve
        self.model_takes_grid = False        # forward(x, t): the grid is the second argument
        self.input_grid: torch.Tensor | None = None   # that argument (None: the solve's grid, t_span)
        self.join: InputJoin | None = None   # the forward takes several inputs, packed in x (dise_cli.inputs)
        self.output_key: str | None = None   # which of several outputs dise judges (see pick_output)
        self.output_note: str | None = None  # how it chose one where the forward returns several
        self._call_grid: torch.Tensor | None = None   # the grid one call was given (see _grid_argument)
        self.grid_sizes: set[int] = set()    # the routed solve's grid lengths seen, where it changes by batch

    @property
    def grid_note(self) -> str | None:
        """Said where the routed solve's grid changed from batch to batch (a model that solves on the union
        of its batch's times): then every sample's NFE and outputs depend on the samples beside it."""
        if len(self.grid_sizes) < 2:
            return None
        return (f"the model's solve takes another time grid for another batch ({min(self.grid_sizes)} to "
                f"{max(self.grid_sizes)} points seen; the union of the batch's times?): a sample's NFE and output "
                f"depend on the samples it is batched with, so the figures hold for this --batch-size")

    @property
    def calls_after_solve(self) -> int:
        """Calls of f each sample costs beyond its solve: a loop's last Euler step (``LoopForm.finish``)."""
        return int(self.loop_form is not None and self.loop_form.end_at is not None)

    @property
    def h0_shape(self) -> tuple[int, ...]:
        return self.layout.state_shape

    def model_args(self, x: torch.Tensor) -> tuple:
        grid = None
        if self.model_takes_grid:
            grid = self._call_grid if self._call_grid is not None else (
                self.t_span if self.input_grid is None else self.input_grid)
        return model_call_args(x, self.join, grid)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The model as it is (its own solver), outputs batch first."""
        self._call_grid = None
        return self.batch_major(self.module(*self.model_args(x)))

    def _grid_argument(self, t: torch.Tensor | None) -> None:
        """A call's ``t``: for a model that takes its grid as an argument (``forward(x, t)``), one grid
        ``[T]`` is that argument for this call; otherwise (or a grid per sample) ``InputError``."""
        self._call_grid = None
        if t is None:
            return
        if self.model_takes_grid and t.ndim == 1:
            self._call_grid = t
            return
        raise InputError("a time grid per sample is for a model that is a bare vector field; this model passes "
                         "its own grid to its solver" + (" (give one grid [T])" if self.model_takes_grid else ""))

    def batch_major(self, out: Any) -> torch.Tensor:
        out = pick_output(out, self.output_key)
        return out.transpose(0, 1) if self.output_time_major else out

    def record(self) -> dict:
        """How the model was read, as plain data (selector files and bundle manifests keep it, so that
        a later command can check it reads the model the same way)."""
        return {"how": self.how, "kind": self.kind, "solve": self.target if self.how == "traced" else None,
                "block": self.block_path, "extraction": getattr(self, "extraction", None),
                "output_format": getattr(self, "output_format", None), "layout": self.layout.to_dict(),
                "time_mode": self.field.mode.value, "scalar_time": self.field.scalar_time, "arg_order": self.field.order,
                "output_time_major": self.output_time_major, "model_takes_grid": self.model_takes_grid,
                "t_span": [float(v) for v in self.t_span],
                "input_grid": None if self.input_grid is None else [float(v) for v in self.input_grid],
                "inputs": None if self.join is None else self.join.to_dict(),
                "output_key": self.output_key, "time_scale": self.time_scale,
                "loop_form": None if self.loop_form is None else self.loop_form.to_dict(),
                "conditioning": None if getattr(self, "call_shape", None) is None else self.call_shape.to_dict(),
                "library": self.solves[self.target].library if self.how == "traced" else None}

    def encode(self, x: torch.Tensor, t: torch.Tensor | None = None) -> Problem:
        """The solve the model poses for inputs ``x`` (``t``: a grid per sample ``[N, T]``, bare fields only)."""
        raise NotImplementedError

    def decode(self, problem: Problem, ys: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_with(self, x: torch.Tensor, solve: Solve, t: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def solve_and_decode(self, x: torch.Tensor, problem: Problem | None, solve: Solve,
                         t: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs for ``x`` with ``solve``, reusing ``problem`` (from ``encode``) where the decoder runs alone."""
        if problem is not None and self.splittable:
            return self.decode(problem, solve(problem))
        return self.forward_with(x, solve, t)


def pick_output(out: Any, key: str | None = None) -> Any:
    """The output dise judges, from what the forward returns: a tensor as it is; of a tuple or list,
    the last element, or element ``key`` (an index, or a named tuple's field); of a dict or a named
    tuple, entry ``key``, or without one its only tensor. ``InputError`` naming ``--output-key`` where the choice is not clear."""
    if isinstance(out, dict):
        if key is None:
            tensors = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                raise InputError(f"the model returns a dict (keys {', '.join(map(str, out)) or 'none'}); name the "
                                 f"output dise judges with --output-key")
            return out[tensors[0]]
        if key not in out:
            raise InputError(f"--output-key: the model's output has no key '{key}' (keys "
                             f"{', '.join(map(str, out)) or 'none'})")
        return out[key]
    if isinstance(out, (tuple, list)):
        if key is None and hasattr(out, "_fields"):           # a named tuple: its fields say what each is
            tensors = [f for f in out._fields if isinstance(getattr(out, f), torch.Tensor)]
            if len(tensors) != 1:
                raise InputError(f"the model returns a named tuple {type(out).__name__} (fields "
                                 f"{', '.join(out._fields)}); name the output dise judges with --output-key")
            return getattr(out, tensors[0])
        if key is None:
            if not isinstance(out[-1], torch.Tensor):
                raise InputError(f"the model returns {len(out)} outputs and the last is a {type(out[-1]).__name__}; "
                                 f"name the output dise judges with --output-key N (0 to {len(out) - 1})")
            return out[-1]
        if hasattr(out, "_fields") and key in out._fields:       # a named tuple's field
            return getattr(out, key)
        try:
            return out[int(key)]
        except (ValueError, IndexError):
            raise InputError(f"--output-key: the model returns a {type(out).__name__} of {len(out)}; give an index "
                             f"from 0 to {len(out) - 1}" + (f" or a field ({', '.join(out._fields)})"
                                                           if hasattr(out, "_fields") else "")) from None
    if key is not None:
        raise InputError(f"--output-key: the model returns one {type(out).__name__}, not a dict or tuple")
    return out


def output_note(out: Any, key: str | None, n: int) -> str | None:
    """What a person should know when the forward (run on ``n`` samples) returns several outputs and
    dise took one by default."""
    if key is not None or not isinstance(out, (tuple, list)) or len(out) < 2 or hasattr(out, "_fields"):
        return None
    last = out[-1]
    shape = f"of shape {tuple(last.shape)} for {n} samples" if isinstance(last, torch.Tensor) else type(last).__name__
    return (f"the model returns {len(out)} outputs (a {type(out).__name__}); dise judges the last, {shape} "
            f"(--output-key N picks another)")


def model_call_args(x: torch.Tensor, join: InputJoin | None, grid: torch.Tensor | None = None) -> tuple:
    """The arguments of the model's forward for rows ``x``: its inputs (unpacked where ``join`` says it
    takes several), then, for a model that takes one, its time grid in the first input's dtype."""
    inputs = join.unpack(x) if join is not None else (x,)
    if grid is None:
        return inputs
    first = inputs[0]
    return (*inputs, grid.to(first.device, first.dtype if first.is_floating_point() else torch.float32))


def extract(result: Any, how: str) -> Any:
    """What a block returns, from what its solver returned: ``returned`` (all of it), ``final`` (the last
    state), ``solution`` (torchdyn's trajectory without its times)."""
    if how == "returned":
        return result
    if how == "solution":
        return result[1]
    if how == "final":
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.Tensor) and \
                isinstance(result[1], torch.Tensor) and result[0].ndim == 1 and result[1].ndim >= 2 and \
                len(result[0]) == len(result[1]):
            return result[1][-1]                       # torchdyn's (t, trajectory)
        if isinstance(result, tuple):
            return tuple(r[-1] for r in result)        # torchdiffeq's tuple state
        return result[-1]
    raise ValueError(f"unknown block output '{how}'")


EXTRACTIONS = ("returned", "final", "solution")


def pack_call(layout: StateLayout, context: RowContext | None, call: SolveCall) -> torch.Tensor:
    """The state of the model's call packed for dise's solvers, with the per-sample tensors its f reads
    (``context``) as columns after it."""
    if context is None:
        return layout.pack(call.y0)
    state = call.y0[0] if isinstance(call.y0, (tuple, list)) else call.y0
    n = layout.samples(call.y0)
    # f makes some of its per-sample tensors when first called (FFJORD's noise)
    return layout.pack(call.y0, context.gather(call.func, n, state.dtype, state.device, lambda: call_once(call)))


def call_once(call: SolveCall) -> Any:
    """f of the model's call, once, at its first time on its whole initial state (no gradient kept)."""
    state = call.y0[0] if isinstance(call.y0, (tuple, list)) else call.y0
    with torch.no_grad():
        return call.func(call.t[0].to(state.device, state.dtype), call.y0)


class _Captured(Exception):
    def __init__(self, call: SolveCall):
        super().__init__("solve captured")
        self.call = call


class _Dispatch:
    """The handler of one forward: numbers the calls, answers the target, lets the others run as written."""

    def __init__(self, target: tuple, on_target: Callable[[SolveCall], Any], root: nn.Module):
        self.target = target
        self.on_target = on_target
        self.numbers = CallNumbers(root)
        self.hit = False

    def __call__(self, call: SolveCall, run_original: Callable[..., Any]) -> Any:
        self.numbers.number(call)
        if call.is_call(self.target) and not self.hit:
            self.hit = True
            return self.on_target(call)
        return run_original()


class TracedModel(OdeModel):
    """A model whose solver call dise saw. ``kind``: ``sequential`` (the block sits in ``nn.Sequential``
    containers, takes the state as its input and returns what its solver returned, or part of it),
    ``root`` (the same for the model itself), or ``whole`` (anything else: the forward runs whole
    with the call answered, so the decoder does not run alone)."""

    how = "traced"

    def __init__(self, module: nn.Module, field: VectorField, t_span: torch.Tensor, layout: StateLayout,
                 key: tuple, kind: str, extraction: str = "returned",
                 decoder: nn.Module | None = None, encoder: nn.Module | None = None):
        super().__init__(module, field, t_span, layout)
        self.key = key
        self.kind = kind
        self.splittable = kind != "whole"
        self.extraction = extraction
        self.encoder = encoder
        self.decoder = decoder

    def problem_of(self, call: SolveCall) -> Problem:
        layout = StateLayout.of(call.y0, "the solve's initial state", batch_axis=self.layout.batch_axis,
                                blocks=self.layout.blocks)
        if layout.with_context(self.layout.context) != self.layout:
            raise InputError(f"the model's solve got a state of shape {layout.describe()} where the probe saw "
                             f"{self.layout.describe()}; dise reads one state structure per model")
        h0 = pack_call(self.layout, self.field.context, call)
        if len(call.t) != len(self.t_span) or self.grid_sizes:
            self.grid_sizes.update((len(call.t), len(self.t_span)))
        return Problem(field=self.field.with_func(call.func), h0=h0,
                       t=call.t.detach().to(h0.device, torch.float64), call=call)

    def _forward(self, x: torch.Tensor, on_target: Callable[[SolveCall], Any]) -> Any:
        dispatch = _Dispatch(self.key, on_target, self.module)
        with intercept(dispatch, self.module):
            out = self.module(*self.model_args(x))
        if not dispatch.hit:
            site, func, occurrence, _ = self.key
            if self.module.training:
                raise InputError(f"in training mode the model's forward does not make the solve dise read in eval "
                                 f"mode ({site}{f' with {func}' if func else ''}): it solves another way when "
                                 f"training (FFJORD's CNF adds its regularisation states), which dise cannot "
                                 f"fine-tune through")
            raise InputError(f"the model's forward did not make the solve dise routes ({site}{f' with {func}' if func else ''}, "
                             f"call {occurrence + 1} from there); its solves depend on the input, which dise cannot route")
        return out

    def encode(self, x: torch.Tensor, t: torch.Tensor | None = None) -> Problem:
        self._grid_argument(t)

        def capture(call: SolveCall):
            raise _Captured(call)
        try:
            self._forward(x, capture)
        except _Captured as cap:
            return self.problem_of(cap.call)
        raise InputError("the model's forward finished without making its solve")

    def forward_with(self, x: torch.Tensor, solve: Solve, t: torch.Tensor | None = None) -> torch.Tensor:
        self._grid_argument(t)

        def answer(call: SolveCall):
            problem = self.problem_of(call)
            return call.answer(self.layout.unpack_trajectory(solve(problem)))
        return self.batch_major(self._forward(x, answer))

    def decode(self, problem: Problem, ys: torch.Tensor) -> torch.Tensor:
        if not self.splittable:
            raise InputError("this model's decoder does not run on its own")
        out = extract(problem.call.answer(self.layout.unpack_trajectory(ys)), self.extraction)
        if self.decoder is not None:
            out = self.decoder(out)
        return self.batch_major(out)


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


class _BlockInput(Exception):
    def __init__(self, h0: torch.Tensor):
        super().__init__("h0 captured")
        self.h0 = h0


class AttributeModel(OdeModel):
    """A block found by its attributes (``odefunc``/``func``/``f``/``vf`` and a time span), for solves
    dise cannot see. The block's whole forward is replaced by dise's solve of its input.
    ``kind``: ``sequential`` | ``nested`` | ``root``; ``output_format``: final | trajectory | torchdyn."""

    how = "attributes"

    def __init__(self, module: nn.Module, field: VectorField, t_span: torch.Tensor, layout: StateLayout,
                 kind: str, block_path: str, func_attr: str, output_format: str = "final",
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__(module, field, t_span, layout)
        self.kind = kind
        self.splittable = kind != "nested"
        self.block_path = block_path
        self.func_attr = func_attr
        self.output_format = output_format
        self.encoder = encoder
        self.decoder = decoder
        self.call_shape: CallShape | None = None   # the loop passes f conditioning (dise_cli.conditioning)
        self.held: dict[str, Any] | None = None    # what it passed on the reading's batch

    @property
    def block(self) -> nn.Module:
        return self.module.get_submodule(self.block_path) if self.block_path else self.module

    def _problem(self, h0: torch.Tensor, stage: list[Call] | None = None, check: bool = True) -> Problem:
        """The solve of the block's input ``h0``; ``stage``: the loop's first call of f (a guided pair's two),
        where f is read with its conditioning (its per-sample arguments go with the state as context columns)."""
        if self.loop_form is not None:
            h0 = self.loop_form.start(h0)
        context = self.field.context
        if context is not None:
            # the batch's arguments, where the field's f holds the reading's: the same wrappers around them
            func = getattr(self.block, self.func_attr)
            chain = loop_func(Conditioned(func, self.call_shape, self.call_shape.values(stage)), self.field.order,
                              self.time_scale, self.loop_form)
            h0 = self.layout.pack(h0, context.gather(chain, h0.shape[0], h0.dtype, h0.device, first_call=lambda: None,
                                                     check=check))
        return Problem(field=self.field, h0=h0, t=self.t_span.to(h0.device))

    def loop_problem(self, x: torch.Tensor, traced: bool = False) -> Problem:
        """The problem of a loop that passes f conditioning (see ``loop_start``)."""
        return self.loop_start(x, traced)[0]

    def loop_start(self, x: torch.Tensor, traced: bool = False) -> tuple[Problem, list[Call]]:
        """The problem of a loop that passes f conditioning, and the calls of f it was read from: the block's
        input and f's first call (a guided pair's two), from one forward stopped there, its held arguments
        checked the reading's (``traced``: while torch.export traces it, the forward run to its end and
        nothing compared; see ``first_calls``)."""
        func, shape, n = getattr(self.block, self.func_attr), self.call_shape, x.shape[0]
        h0, calls = first_calls(self.module, func, self.block, self.model_args(x), stop=not traced,
                                done=lambda so_far: shape.stage_found(so_far, n))
        calls = shape.stage(calls, n)
        if h0 is None or len(calls) < shape.calls_per_stage:
            raise InputError(f"the model's forward did not call its ODE function '{self.func_attr}' in its block "
                             f"'{self.block_path or '(the model itself)'}' for this batch")
        if not traced:
            self.call_shape.check_held(self.held, calls, "the model's loop")
        return self._problem(h0, calls, check=not traced), calls

    def encode(self, x: torch.Tensor, t: torch.Tensor | None = None) -> Problem:
        self._grid_argument(t)
        if self.call_shape is not None:
            return self.loop_problem(x)
        if self.kind == "root" and self.join is None:
            return self._problem(x)
        if self.kind == "sequential":
            return self._problem(self.encoder(x))

        def capture(h, *args, **kwargs):
            raise _BlockInput(h)
        with _SwapForward(self.block, capture):
            try:
                self.module(*self.model_args(x))
            except _BlockInput as cap:
                return self._problem(cap.h0)
        raise InputError(f"the model's forward never called its ODE block '{self.block_path}'")

    def block_output(self, problem: Problem, ys: torch.Tensor) -> Any:
        """What the block returns for the solution ``ys`` (packed) of ``problem``."""
        if self.loop_form is not None:          # a loop's last step (only final outputs are read with one)
            return self.layout.unpack(self.loop_form.finish(problem.field, self.t_span[-1], ys[-1]))
        ys = self.layout.unpack_trajectory(ys) if self.layout.context else ys
        if self.output_format == "final":
            return ys[-1]
        if self.output_format == "torchdyn":
            return self.t_span.to(ys.device, ys.dtype), ys
        return ys

    def decode(self, problem: Problem, ys: torch.Tensor) -> torch.Tensor:
        out = self.block_output(problem, ys)
        if self.kind == "sequential":
            out = self.decoder(out)
        return self.batch_major(out)

    def forward_with(self, x: torch.Tensor, solve: Solve, t: torch.Tensor | None = None) -> torch.Tensor:
        if self.splittable:
            problem = self.encode(x, t)
            return self.decode(problem, solve(problem))
        self._grid_argument(t)
        if self.call_shape is not None:
            problem = self.loop_problem(x)

            def answer(h, *a, **k):
                return self.block_output(problem, solve(problem))
        else:
            def answer(h, *a, **k):
                problem = self._problem(h)
                return self.block_output(problem, solve(problem))
        with _SwapForward(self.block, answer):
            return self.batch_major(self.module(*self.model_args(x)))


class BareField(OdeModel):
    """The saved module is f itself (``ode_demo`` style, or a flow-matching velocity field): the data
    are initial states, the output is the trajectory on the grid, batch first."""

    how = "bare"
    kind = "bare"

    def __init__(self, module: nn.Module, field: VectorField, t_span: torch.Tensor, layout: StateLayout):
        super().__init__(module, field, t_span, layout)
        self.output_time_major = True

    def run(self, x: torch.Tensor) -> torch.Tensor:
        raise InputError("a bare vector field has no solver of its own to run")

    def encode(self, x: torch.Tensor, t: torch.Tensor | None = None) -> Problem:
        grid = self.t_span if t is None else t
        return Problem(field=self.field, h0=x, t=grid.to(x.device, torch.float64))

    def decode(self, problem: Problem, ys: torch.Tensor) -> torch.Tensor:
        return self.batch_major(ys)

    def forward_with(self, x: torch.Tensor, solve: Solve, t: torch.Tensor | None = None) -> torch.Tensor:
        problem = self.encode(x, t)
        return self.decode(problem, solve(problem))
