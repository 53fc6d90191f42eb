"""A read model as ``torch.export`` programs, so that a bundle runs without the user's code.

Two layouts:

- ``split`` (the decoder runs on its own): ``encoder`` (x -> the state as the model passes it),
  ``ode_function`` (f over the packed state) and ``decoder`` (the trajectory -> outputs);
- ``whole`` (a forward that runs its solve itself: latent ODEs, augmented blocks, an encoder then
  ``odeint``): ``model`` (the user's forward, its routed solve replaced by the ``dise::solve``
  operator) and ``ode_function``. At run time the operator asks the routed model for the solution.

f keeps its time convention: fields that take a time per row are exported with ``t`` of shape
``[N]``; fields that need ``vmap`` are exported for one row and vmapped when loaded; fields that
take only a scalar time are exported with one and called once per distinct time.
"""
from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
import zipfile
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from dise_cli.conditioning import same_value
from dise_cli.errors import InputError, first_line
from dise_cli.integrators.vector_field import PER_ROW_MODES, TimeMode, VectorField
from dise_cli.inputs import InputJoin
from dise_cli.loopform import LoopForm
from dise_cli.odemodel import OdeModel, Problem, Solve, TracedModel, _Dispatch, extract
from dise_cli.rowcontext import RowContext
from dise_cli.solvecalls import intercept
from dise_cli.states import StateLayout

SPLIT = ("encoder", "ode_function", "decoder")
WHOLE = ("model", "ode_function")


class _OpState(threading.local):
    handler: Callable[[list, torch.Tensor], list] | None = None


_op = _OpState()


@torch.library.custom_op("dise::solve", mutates_args=())
def solve_op(y0: list[torch.Tensor], t: torch.Tensor) -> list[torch.Tensor]:
    """The routed solve of an exported model: the state's components in, their trajectories out."""
    if _op.handler is None:
        raise RuntimeError("dise::solve runs only inside a model loaded with dise_cli.load")
    return _op.handler(list(y0), t)


@solve_op.register_fake
def _solve_fake(y0, t):
    return [y.new_empty((t.shape[0], *y.shape)) for y in y0]


def torchdyn_times(t: torch.Tensor, backwards: bool) -> torch.Tensor:
    """The times torchdyn returns beside its solution: negated when it integrated backwards."""
    return -t if backwards else t


class FieldPart(nn.Module):
    """f as a bundle stores it: packed state in, packed derivative out, with a time per row where f
    takes one (``per_row``), else one time for the batch. Registers the modules f calls."""

    def __init__(self, field: VectorField, modules: list[nn.Module], per_row: bool):
        super().__init__()
        self.owners = nn.ModuleList(modules)
        self.__dict__["field"] = field
        self.per_row = per_row

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.field.at_times(t, h) if self.per_row else self.field(t, h)


class _Decoder(nn.Module):
    """The trajectory (a tensor or a tuple, as the model's solver returned it) -> the model's outputs."""

    def __init__(self, ode: OdeModel):
        super().__init__()
        self.after = ode.decoder if ode.kind == "sequential" else nn.Identity()
        self.ode_how = ode.how
        self.register_buffer("t_eval", ode.t_span.to(torch.float32), persistent=False)
        if isinstance(ode, TracedModel):
            self.extraction, self.library = ode.extraction, ode.solves[ode.target].library
            self.backwards = len(ode.t_span) > 1 and bool(ode.t_span[1] < ode.t_span[0])
        elif ode.how == "attributes":
            self.format = ode.output_format

    def forward(self, ys: Any) -> Any:
        if self.ode_how == "traced":
            t = torchdyn_times(self.t_eval, self.backwards).to(_first(ys).dtype)
            out = extract((t, ys) if self.library == "torchdyn" else ys, self.extraction)
        elif self.ode_how == "attributes":
            out = ys[-1] if self.format == "final" else (self.t_eval.to(ys.dtype), ys) if self.format == "torchdyn" \
                else ys
        else:
            out = ys
        return self.after(out)


def _first(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value[0]


def _field_export(ode: OdeModel, h0: torch.Tensor) -> tuple[nn.Module, tuple, Any, str]:
    """f's program, its example arguments, dynamic shapes, and the time mode it is loaded with."""
    field, mode = ode.field, ode.field.mode
    batch = torch.export.Dim("batch", min=2, max=1 << 20)
    t0 = ode.t_span[0].to(h0.device, h0.dtype)
    if mode in PER_ROW_MODES and mode is not TimeMode.VMAP:
        part = FieldPart(field, ode.func_modules, per_row=True)
        return part, (t0.expand(len(h0)).clone(), h0), ({0: batch}, {0: batch}), TimeMode.ROWS.value
    if mode is TimeMode.VMAP:       # vmap does not export with a dynamic batch: one row, vmapped when loaded
        part = FieldPart(field, ode.func_modules, per_row=False)
        return part, (t0, h0[:1]), None, TimeMode.VMAP.value
    part = FieldPart(field, ode.func_modules, per_row=False)
    return part, (t0, h0), (None, {0: batch}), TimeMode.LOOP.value


def unsplit_reason(ode: OdeModel) -> str:
    """Why a model read by its attributes does not split into programs: its forward calls the block among
    work of its own (before and after it), which a program of the block alone would leave out."""
    block = ode.block_path or "(the model itself)"
    return (f"the model's forward calls its ODE block '{block}' among work of its own, which dise does not split "
            f"into programs")


def export_programs(ode: OdeModel, x: torch.Tensor) -> tuple[dict[str, bytes], str | None, str, str]:
    """``({name: .pt2 bytes}, layout, note, f's loaded time mode)``; no programs (and why) where
    ``torch.export`` cannot capture a part."""
    if ode.how == "attributes" and not ode.splittable:
        return {}, None, unsplit_reason(ode), ""
    conditioned = getattr(ode, "call_shape", None) is not None
    if ode.field.context is not None and not (conditioned and ode.field.mode is not TimeMode.VMAP):
        # a closure's per-sample tensors do not pass through dise::solve; a conditioned loop's ride as columns
        return {}, None, f"f reads per-sample tensors from outside its state ({ode.field.context.describe()})", ""
    x = x[:4] if len(x) >= 2 else x.expand(2, *x.shape[1:])
    batch = torch.export.Dim("batch", min=2, max=1 << 20)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_torch_logs():
            warnings.simplefilter("ignore")
            problem = ode.encode(x)
            part, args, shapes, loaded_mode = _field_export(ode, problem.h0)
            programs = {"ode_function": torch.export.export(part, args, dynamic_shapes=shapes, strict=False)}
            if ode.splittable:
                layout = "split"
                programs.update(_split_parts(ode, x, problem, batch))
            else:
                layout = "whole"
                programs["model"] = _whole_part(ode, x, batch)
            # serialising fails on some outputs too (a named tuple torch has no name for)
            saved = {name: _without_pickle(ep) for name, ep in programs.items()}
    except _Unexportable as exc:
        return {}, None, str(exc), ""
    except Exception as exc:  # noqa: BLE001 - torch.export fails in many ways on user code
        return {}, None, f"torch.export failed: {type(exc).__name__}: {first_line(exc)}{_export_hint(ode, exc)}", ""
    return saved, layout, "", loaded_mode


def _export_hint(ode: OdeModel, exc: Exception) -> str:
    """What in the user's code commonly makes torch.export fail as ``exc`` did, where dise can tell."""
    text = str(exc)
    if "data-dependent" in text or type(exc).__name__ == "GuardOnDataDependentSymNode":
        return " (a Python if, int() or float() on a tensor's value in the model's forward or f)"
    shape = getattr(ode, "call_shape", None)
    if "Constraints violated" in text and shape is not None and shape.guidance is not None \
            and shape.guidance.kind == "doubled":
        return (" (the loop's split of f's doubled output, as chunk(2), ties the batch size; out[:n], out[n:] "
                "exports)")
    if "Constraints violated" in text:
        return " (something in the forward fixes the batch size: len(x) does, x.shape[0] does not)"
    return ""


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs its reasons for failing at WARNING, and prints the partial graph it was tracing to
    stderr when a data-dependent guard stops it; dise says why in one line instead."""
    logger = logging.getLogger("torch")
    level = logger.level
    # CRITICAL: fake tensors log a failed meta kernel at ERROR, with its whole traceback, through a
    # handler that holds the real stderr
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


class _StartOfLoop(nn.Module):
    """The encoder of a loop that hands f conditioning (``dise_cli.conditioning``): the model's forward
    up to f's first call, giving the loop's start packed with the per-sample arguments it hands f."""

    def __init__(self, ode: OdeModel, held: tuple[str, ...] = ()):
        super().__init__()
        self.model = ode.module
        self.__dict__["ode"] = ode
        self.held = held          # also give these held arguments' tensors, to see what they are made from

    def forward(self, x: torch.Tensor):
        problem, stage = self.ode.loop_start(x, traced=True)
        if not self.held:
            return problem.h0
        values = self.ode.call_shape.values(stage)
        # a number worked out from the batch's size is symbolic while torch.export traces it
        self.__dict__["sized"] = [name for name in self.held
                                  if any(isinstance(leaf, (torch.SymInt, torch.SymFloat, torch.SymBool))
                                         for leaf in tree_leaves(values[name]))]
        return (problem.h0, *(leaf for name in self.held for leaf in tree_leaves(values[name])
                              if isinstance(leaf, torch.Tensor)))


class _Unexportable(Exception):
    """A model whose programs would not be the model: why, in words."""


def _check_held_constant(ode: OdeModel, x: torch.Tensor, batch) -> None:
    """The held arguments a loop hands f (not per sample) are baked into f's program as the reading's values:
    right where they are the model's own (parameters, constants), wrong where the forward computes them from
    its input (a scale from the batch's size or values), which the model rebuilt from ``--arch`` checks for
    every batch. The start of the loop is traced giving their tensors too, and each is followed back to
    what it is made from."""
    shape, held = ode.call_shape, ode.held or {}
    names = tuple(name for _, name in shape.held if name not in shape.per_row
                  and any(isinstance(leaf, (torch.Tensor, int, float)) for leaf in tree_leaves(held.get(name))))
    if not names:
        return
    made_from_input = []
    start = _StartOfLoop(ode, names)
    try:
        program = torch.export.export(start, (x,), dynamic_shapes=({0: batch},), strict=False)
        made_from_input = list(start.__dict__.get("sized", []))
    except Exception:  # noqa: BLE001 - a forward that fixes the batch size (torch.full((len(z),), t)) on the way
        # traced for this batch size, and what a size changes seen by running it at others
        program = torch.export.export(start, (x,), strict=False)
        larger = (x.repeat(-(-m // len(x)), *(1,) * (x.ndim - 1))[:m] for m in (2 * len(x) + 1, 67))
        for rows in (x[:1], x[:2], *larger):
            try:
                _, stage = ode.loop_start(rows)
            except InputError:
                made_from_input = list(names)
                break
            now = shape.values(stage)
            made_from_input = [name for name in names if not same_value(now[name], held[name])]
            if made_from_input:
                break
    inputs = set(program.graph_signature.user_inputs)
    output = next(node for node in program.graph.nodes if node.op == "output")
    for name, node in zip(names, output.args[0][1:]):
        seen, todo = set(), [node]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo.extend(current.all_input_nodes)
        if any(n.op == "placeholder" and n.name in inputs for n in seen) and name not in made_from_input:
            made_from_input.append(name)
    if made_from_input:
        raise _Unexportable(f"the loop hands f {', '.join(made_from_input)}, computed from the model's input but "
                            f"not one row per sample, which programs would hold at the value read")


def _split_parts(ode: OdeModel, x: torch.Tensor, problem: Problem, batch) -> dict:
    encoder = ode.encoder if ode.kind == "sequential" else nn.Identity()
    if getattr(ode, "call_shape", None) is not None:
        _check_held_constant(ode, x, batch)
        if ode.field.context is not None:
            encoder = _StartOfLoop(ode)    # per-sample arguments to pack beside the start; held ones are f's own
    decoder = _Decoder(ode).to(x.device)
    ys = ode.layout.unpack_trajectory(problem.h0.unsqueeze(0).expand(len(problem.t), *problem.h0.shape).contiguous())
    ys_shapes = tuple({1: batch} for _ in ys) if isinstance(ys, tuple) else {1: batch}
    encoded = torch.export.export(encoder, (x,), dynamic_shapes=({0: batch},), strict=False)
    if isinstance(encoder, _StartOfLoop):
        _drop_dead_code(encoded)
    return {"encoder": encoded,
            "decoder": torch.export.export(decoder, (ys,), dynamic_shapes=(ys_shapes,), strict=False)}


def _drop_dead_code(program) -> None:
    """Remove what does not reach the program's outputs: a loop's start is traced through the whole loop
    (f run on its first calls only, see ``conditioning.first_calls``), whose steps torch.export keeps
    alive through the dtype checks it adds to each ``.to``; the checks go first (the program's input
    dtype is fixed), then every node nothing uses."""
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default:
            graph.erase_node(node)
    graph.eliminate_dead_code()
    program.graph_module.recompile()


def _whole_part(ode: TracedModel, x: torch.Tensor, batch):
    """The user's forward with its routed solve replaced by ``dise::solve``."""
    info = ode.solves[ode.target]
    backwards = len(ode.t_span) > 1 and bool(ode.t_span[1] < ode.t_span[0])

    def on_target(call):
        parts = list(call.y0) if isinstance(call.y0, (tuple, list)) else [call.y0]
        out = torch.ops.dise.solve(parts, call.t)
        ys = tuple(out) if ode.layout.is_tuple else out[0]
        if info.library == "torchdyn":
            return torchdyn_times(call.t, backwards), ys
        return ys

    args = ode.model_args(x)
    inputs = len(ode.join) if ode.join is not None else 1          # each with the batch first; a grid after them
    shapes = tuple({0: batch} for _ in range(inputs)) + (None,) * (len(args) - inputs)
    with intercept(_Dispatch(ode.key, on_target, ode.module), ode.module):
        return torch.export.export(ode.module, args, dynamic_shapes=shapes, strict=False)


def _without_pickle(ep) -> bytes:
    """The .pt2 archive with its sample-inputs member (a pickle) left empty."""
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            z.writestr(info, b"" if "sample_inputs" in info.filename else src.read(info.filename))
    return out.getvalue()


def load_program(members: dict[str, bytes], name: str, bundle: str) -> nn.Module:
    data = members.get(f"{name}.pt2")
    if data is None:
        raise InputError(f"bundle '{bundle}' is missing member '{name}.pt2'")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if ("sample_inputs" in info.filename or info.filename.endswith((".pt", ".pkl"))) and info.file_size:
                raise InputError(f"bundle '{bundle}': '{name}.pt2' carries a pickle ('{info.filename}'); dise "
                                 f"does not load it")
    try:
        # loading logs notes such as "Symbol u0 did not appear in the graph that was deserialized"
        with warnings.catch_warnings(), _quiet_torch_logs():
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(data)).module()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"bundle '{bundle}': '{name}.pt2' could not be loaded ({first_line(exc)})") from None
    if name == "ode_function":
        # f is called a few hundred times per solve with inputs dise shaped itself: its per-call check of the
        # input shapes (a Python hook) would cost more than a small f.
        program._forward_pre_hooks.clear()
    return program


class _OneRowProgram:
    """An f exported for one row and a 0-dim time, called on a batch with a time per row by vmap."""

    def __init__(self, program: nn.Module):
        self.program = program
        self.vmapped = torch.func.vmap(lambda ti, hi: program(ti, hi.unsqueeze(0)).squeeze(0))

    def __call__(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.vmapped(t.expand(h.shape[0]) if t.ndim == 0 else t, h)


class _WithColumns(nn.Module):
    """An f program over the packed state, per-sample columns included, as a field of the state: the field
    binds each call's columns (``context``), and the state is packed with them again for the program."""

    def __init__(self, program: Any, layout: StateLayout):
        super().__init__()
        self.program, self.layout, self.columns = program, layout, None

    @staticmethod
    def context(layout: StateLayout) -> RowContext:
        # the columns as they ride (in the state's dtype, which float64 holds exactly)
        return RowContext(paths=((("attr", "columns"),),), shapes=((layout.context,),), dtypes=(torch.float64,))

    def forward(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        out = self.program(t, self.layout.pack(state, self.columns))
        return out[:, :sum(self.layout.sizes)].reshape(out.shape[0], *self.layout.shapes[0])


class _OpCaptured(Exception):
    def __init__(self, y0: list, t: torch.Tensor):
        super().__init__("solve captured")
        self.y0, self.t = y0, t


class _Parts(nn.Module):
    """A bundle's programs, registered so that ``.to()`` reaches them; not trained, not switched to eval."""

    exported_programs = True

    def __init__(self, **programs: nn.Module):
        super().__init__()
        for name, program in programs.items():
            self.add_module(name, program)


class ProgramModel(OdeModel):
    """A model loaded from a bundle's programs (``split`` or ``whole``), with the interface of the
    model it was exported from."""

    how = "programs"

    def __init__(self, programs: dict[str, nn.Module], layout_kind: str, reading: dict, field_mode: str):
        layout = StateLayout.from_dict(reading["layout"])
        func = programs["ode_function"]
        if field_mode == TimeMode.VMAP.value:          # exported for one row: vmapped over the batch here
            func, field_mode = _OneRowProgram(func), TimeMode.ROWS.value
        # a conditioned loop's encoder gives the loop's start packed with f's per-sample arguments as columns
        self.packed_start = reading.get("conditioning") is not None and bool(layout.context)
        context = None
        if layout.context:
            func, context = _WithColumns(func, layout), _WithColumns.context(layout)
        field = VectorField(func, field_mode, layout.as_packed(), context=context)
        t_span = torch.tensor(reading["t_span"], dtype=torch.float64)
        super().__init__(_Parts(**programs), field, t_span, layout)
        self.kind = reading["kind"] if layout_kind == "split" else "whole"
        self.splittable = layout_kind == "split"
        self.programs = programs
        self.output_time_major = bool(reading["output_time_major"])
        self.model_takes_grid = bool(reading.get("model_takes_grid", False))
        self.join = InputJoin.from_dict(reading.get("inputs"))
        self.output_key = reading.get("output_key")
        if reading.get("input_grid") is not None:
            self.input_grid = torch.tensor(reading["input_grid"], dtype=torch.float64)
        self.block_path = reading.get("block", "")
        self.loop_form = LoopForm.from_dict(reading.get("loop_form"))

    def _problem(self, y0: Any, t: torch.Tensor | None = None) -> Problem:
        """The problem for the state's components ``y0`` (a list from ``dise::solve``, or a tensor / tuple)."""
        if isinstance(y0, list):
            y0 = tuple(y0) if self.layout.is_tuple else y0[0]
        if self.packed_start:
            h0 = y0
        else:
            h0 = self.layout.pack(y0)
            if self.loop_form is not None:
                h0 = self.loop_form.start(h0)
        grid = self.t_span if t is None else t.detach()
        return Problem(field=self.field, h0=h0, t=grid.to(h0.device, torch.float64))

    def encode(self, x: torch.Tensor, t: torch.Tensor | None = None) -> Problem:
        if self.splittable:
            return self._problem(self.programs["encoder"](x), t)
        self._grid_argument(t)

        def capture(y0, t):
            raise _OpCaptured(y0, t)
        try:
            self._run_whole(x, capture)
        except _OpCaptured as cap:
            return self._problem(cap.y0, cap.t)
        raise InputError("the exported model finished without its solve")

    def decode(self, problem: Problem, ys: torch.Tensor) -> torch.Tensor:
        if self.loop_form is not None:
            ys = self.loop_form.finish_trajectory(self.field, self.t_span[-1], ys)
        return self.batch_major(self.programs["decoder"](self.layout.unpack_trajectory(ys)))

    def forward_with(self, x: torch.Tensor, solve: Solve, t: torch.Tensor | None = None) -> torch.Tensor:
        if self.splittable:
            problem = self.encode(x, t)
            return self.decode(problem, solve(problem))
        self._grid_argument(t)

        def answer(y0: list, t: torch.Tensor) -> list:
            problem = self._problem(y0, t)
            ys = self.layout.unpack_trajectory(solve(problem))
            return list(ys) if isinstance(ys, tuple) else [ys]
        return self.batch_major(self._run_whole(x, answer))

    def _run_whole(self, x: torch.Tensor, handler) -> Any:
        previous, _op.handler = _op.handler, handler
        try:
            return self.programs["model"](*self.model_args(x))
        finally:
            _op.handler = previous
