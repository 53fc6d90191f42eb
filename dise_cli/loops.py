"""The solver of a model whose solve dise cannot see (a hand-written loop read by its attributes),
found by watching the loop call f.

A fixed-step loop (rectified flow's Euler ``sample_ode``, an ODE block's own RK4) calls f the same
number of times at the same times whatever the input. Where it does, dise runs the fixed-step methods
that make that many calls over its grid, and the one that reproduces the model to round-off is the
model's own solver: the baseline, run exactly. A loop over a schedule of its own (Flux's shifted
timesteps, a grid from 1 down to 0) steps where f's calls say it does: each method's nodes give the
grid its steps start from (a step's end is the next one's start; the last one's, for Euler, whose one
call tells nothing of its end, is the grid's end, 0 or 1), and where that grid reproduces the model,
it is the grid dise solves on (``LoopFinding.grid``). Where none does, the closest stands as the
model's solver, and the fidelity check, which holds a fixed grid to round-off, refuses the reading:
dise has misread something (the initial state, the grid) that no tolerance may hide. A loop whose
times follow the input (an adaptive one) is left to the fidelity check's tolerance for dise's guess.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dise_cli.conditioning import one_time, pick_output, same_value, slot_value
from dise_cli.errors import InputError
from dise_cli.fidelity import max_abs, round_off
from dise_cli.integrators import Integrator
from dise_cli.integrators.fixed_grid import RK4, Euler, Heun2, Heun3, Midpoint, RK4Classic
from dise_cli.integrators.vector_field import TIME_NAMES
from dise_cli.loopform import LoopForm, TimeScaled
from dise_cli.odeblock import MAX_CALLS_READ
from dise_cli.odemodel import OdeModel
from dise_cli.seeding import seeded

LOOP_METHODS = (Euler, Midpoint, Heun2, Heun3, RK4, RK4Classic)


@dataclass(frozen=True)
class LoopFinding:
    """A loop that calls f at the same times whatever the input: ``integrator`` is the fixed-step method
    with that many calls over dise's grid that comes closest to the model; ``exact`` where it
    reproduces it to round-off (then it is the model's own solver; otherwise the fidelity check, held
    to round-off, refuses the reading)."""

    times: tuple[float, ...]       # f's calls in one forward
    integrator: Integrator | None  # None: no fixed-step method makes that many calls over the grid
    difference: float
    exact: bool
    span: tuple[float, float] | None = None   # where the loop runs, where dise's grid is not that
    scaled: bool = False      # refused, with f called far outside dise's grid: its time perhaps on another scale
    time_scale: float | None = None   # f called at this many times the loop's own time (``TimeScaled``)
    extra: tuple[str, ...] = ()       # what the loop passes f beyond a time and a state: dise cannot pass it
    heun_last_euler: bool = False     # refused, with calls that pair up as Heun steps but for an Euler last one
    form: LoopForm | None = None      # the loop's f is a denoiser, its start, its last step (``dise_cli.loopform``)
    integer_times: tuple[int, ...] = ()   # refused: f given integer timesteps (a DDPM/DDIM-style discrete loop)

    @property
    def refused(self) -> bool:
        """A loop dise cannot run, whatever its grid: f given more than a time and a state, or integer times."""
        return bool(self.extra or self.integer_times)

    @property
    def note(self) -> str:
        if self.integer_times:
            shown = _times_text([float(t) for t in self.integer_times])
            return (f"the model's loop calls f with integer timesteps (t = {shown}, as a DDPM or DDIM sampler's "
                    f"discrete steps, or a network fed (sigma * 1000).long()), which no ODE integrator dise runs can "
                    f"pass; give f a float time (the integer steps' schedule as floats), or write the sampler as "
                    f"its probability-flow ODE with torchdiffeq's odeint, and dise routes it")
        if self.extra:
            return (f"the model's loop calls f with more than a time and a state of its samples "
                    f"({'; '.join(self.extra)}), which dise cannot pass; wrap f as f(t, x) holding the rest (the "
                    f"conditioning, the guidance) inside it, or write the loop with torchdiffeq's odeint")
        calls = f"the model's loop calls f {len(self.times)} times, at t = {_times_text(self.times)} whatever the input"
        if self.exact:
            how = "exactly" if self.difference == 0 else f"to {self.difference:.2g}"
            own = getattr(self.integrator, "grid", None)
            method = self.integrator.spec if own is None else \
                f"{self.integrator.name} from each time of its own grid to the next, t = {_grid_text(own)},"
            scale = "" if self.time_scale is None else \
                f" (f called at {self.time_scale:g} times the time the loop steps on, t = its calls / {self.time_scale:g})"
            form = "" if self.form is None else f" ({self.form.describe()})"
            return (f"dise saw no solver call: {calls}, and {method} reproduces it ({how}){scale}{form}: that is its "
                    f"own solver, the baseline")
        calls = f"{calls} (all {len(self.times)}: {', '.join(f'{t:.6g}' for t in self.times)})" \
            if len(self.times) <= MAX_LISTED else calls
        if self.integrator is None:
            return f"{calls}: no fixed-step method makes that many calls over dise's grid"
        sigmas = bool(self.times) and all(t > 0 for t in self.times) and self.times[0] > max(1.0, self.times[-1])
        why = (" (f is called far outside the grid, and f's time at the scales dise tries, the largest call's "
               "and the power of ten above it, reproduces no loop: give f the loop's own time, e.g. a wrapper "
               "that scales it)") if self.scaled else ""
        if self.heun_last_euler:
            why += (" (its calls pair up as Heun steps whose last step is Euler, as EDM's, k-diffusion's and "
                    "REPA's samplers step, but no reading of f dise tries, as a velocity or as a denoiser D(x, σ) "
                    "from the input or the input times the first σ, reproduces it)")
        if sigmas and not self.heun_last_euler:
            why += (" (if f is a denoiser D(x, σ), as EDM's and k-diffusion's are: dise reads Euler, Heun, midpoint "
                    "and RK4 steps over the loop's σ's, the last perhaps one Euler step to 0; DPM-Solver, LMS and "
                    "samplers that add noise it cannot run)")
        return f"{calls}: closest over dise's grid is {self.integrator.spec}, off by {self.difference:.3g}{why}"


def find_loop_solver(ode: OdeModel, x: torch.Tensor, seed: int = 0, own_grid: bool = True,
                     given_span: bool = False) -> LoopFinding | None:
    """What the model's own loop is, from its calls of f; None where they follow the input (an adaptive
    loop) or cannot be watched. ``own_grid``: where no method reproduces the loop over dise's grid,
    look for the loop's own; ``given_span``: the user gave dise's grid's two ends (``--t-span 1,0.002``),
    which the loop's own grid must then start and end at."""
    func = getattr(ode.block, ode.func_attr, None)
    if not isinstance(func, nn.Module) or isinstance(func, torch.jit.ScriptModule) or len(x) < 2:
        return None
    half = len(x) // 2
    watched, again = (_call_times(ode, func, rows, seed) for rows in (x[:half], x[half:]))
    first, second, f_dtype = watched.times, again.times, watched.f_dtype
    if watched.extra or watched.rows > half:
        # f given the loop's conditioning, or more rows than samples (guidance by batch doubling around f)
        read = getattr(ode, "call_shape", None)
        doubled = () if watched.rows <= half else \
            (f"a state of {watched.rows} rows for {half} samples: guidance by batch doubling around f",) if read is None \
            else (f"the batch twice over on later calls ({watched.rows} rows for the {half} samples dise ran it on), "
                  f"where the calls dise read f's conditioning from pass it once (guidance by batch doubling around f "
                  f"that begins after call {MAX_CALLS_READ}, or whose unguided calls pass f no conditioning, "
                  f"as class_labels=None)",)
        return LoopFinding(tuple(first or ()), None, float("inf"), False, extra=(*doubled, *watched.extra))
    if watched.integer_times:
        return LoopFinding((), None, float("inf"), False, integer_times=tuple(watched.integer_times))
    if first is None or first != second or not first:
        return None                                   # times that follow the input: an adaptive loop
    form = ode.loop_form
    # a loop read with its last Euler step outside the solve: the solve's calls are the others
    calls = first[:-1] if form is not None and form.end_at is not None else first
    intervals = len(ode.t_span) - 1
    with torch.no_grad(), seeded(seed, x.device):
        model_out = ode.run(x)
    tried = []
    for cls in LOOP_METHODS:
        stages = cls.tableau.stages
        if not calls or len(calls) % (stages * intervals):
            continue
        integrator = cls(steps=len(calls) // (stages * intervals))
        tried.append((_off_by(ode, x, lambda p: integrator.solve(p.field, p.h0, p.t).ys, model_out, seed), integrator))
    floor = round_off(model_out, [f_dtype], loop=True)     # the very same steps: round-off only
    reach = max(1.0, float(ode.t_span.abs().max()))
    outside = max(abs(t) for t in first) > OUTSIDE * reach
    reproduced = any(difference <= floor for difference, _ in tried)
    if own_grid and not reproduced and len(ode.t_span) == 2:
        # the loop's own grid; f called far outside it: at a multiple of the loop's time, the largest
        # call's (a loop from 1) or the power of ten above it (a loop begun part way, as img2img's from 0.79)
        largest = max(abs(t) for t in first)
        scales = dict.fromkeys((largest, 10.0 ** math.ceil(math.log10(largest)))) if outside and form is None else {}
        for scale in (None, *scales):
            times = calls if scale is None else [t / scale for t in calls]
            span_end = float(ode.t_span[-1])
            for cls, grid in _grids_of_calls(times, (span_end,) if given_span else (span_end, *GRID_ENDS)):
                if given_span:
                    grid = _on_span(grid, float(ode.t_span[0]), span_end)
                    if grid is None:
                        continue
                integrator = cls(grid=grid)
                span = (grid[0], grid[-1])
                difference = _difference(ode, x, integrator, span, scale, model_out, seed)
                if difference <= floor:
                    same = span == tuple(ode.t_span.tolist()) and scale is None
                    return LoopFinding(tuple(first), integrator, difference, True, None if same else span,
                                       time_scale=scale or ode.time_scale, form=form)
    if own_grid and not reproduced and form is None and len(ode.t_span) == 2 and \
            getattr(ode, "output_format", None) == "final":
        found = _find_form(ode, x, first, model_out, floor, given_span, seed)
        if found is not None:
            return found
    if not tried:
        return LoopFinding(tuple(first), None, float("inf"), False)
    difference, best = min(tried, key=lambda pair: pair[0])
    # Heun's two calls a step at its ends (the second the next step's first), then one Euler call
    heun_last_euler = len(first) % 2 == 1 and len(first) > 2 and first[1::2] == first[2::2]
    return LoopFinding(tuple(first), best, difference, difference <= floor, scaled=outside,
                       time_scale=ode.time_scale, heun_last_euler=heun_last_euler, form=form)


def _find_form(ode: OdeModel, x: torch.Tensor, first: list[float], model_out: torch.Tensor, floor: float,
               given_span: bool, seed: int) -> LoopFinding | None:
    """A loop whose last call is one Euler step after a method's steps over a grid ending there (EDM's,
    k-diffusion's and REPA's Heun samplers; k-diffusion's Euler), its f a velocity or a denoiser D(x, σ)
    (every call at σ > 0, the last step to σ = 0, the start perhaps the input times σ_max, in the output's
    dtype where that is wider): the first such reading that reproduces the model, over its solve's span."""
    if len(first) < 2:
        return None
    calls, last = first[:-1], first[-1]
    span_end = float(ode.t_span[-1])
    with torch.no_grad(), seeded(seed, x.device):
        state_dtype = ode.encode(x[:2]).h0.dtype       # the loop's input as f gets it (x may pack several inputs)
    wide = model_out.dtype == torch.float64 and state_dtype != torch.float64
    readings = [LoopForm(end_at=end) for end in dict.fromkeys((span_end,) if given_span else (span_end, *GRID_ENDS))]
    # the state in float64 where the loop's output is and its input is not (EDM's), else (or where D takes
    # only float32, cast by the loop) in the input's dtype
    starts = [(scale, dtype) for scale in (None, first[0]) for dtype in (("float64", None) if wide else (None,))]
    sigmas = all(t > 0 for t in first)
    if sigmas:
        readings += [LoopForm(denoiser=True, start_scale=scale, start_dtype=dtype, end_at=0.0)
                     for scale, dtype in starts]
    tries = []
    for cls, grid in _grids_of_calls(calls, (last,)):
        if abs(grid[-1] - last) > 1e-9 * max(1.0, abs(last)):
            continue                         # the last call is not at the end of the method's steps
        direction = grid[-1] - grid[0]
        tries += [(cls, grid, form) for form in readings
                  if form.end_at != last and (form.end_at - last) * direction > 0]
    if sigmas:
        # a denoiser loop that stops at σ_min, every call a step's (k-diffusion's sigmas without the 0)
        tries += [(cls, grid, LoopForm(denoiser=True, start_scale=scale, start_dtype=dtype))
                  for cls, grid in _grids_of_calls(first, ()) for scale, dtype in starts]
    for cls, grid, form in tries:
        integrator = cls(grid=grid)
        span = (grid[0], grid[-1])
        difference = _difference(ode, x, integrator, span, None, model_out, seed, form)
        if difference <= floor:
            return LoopFinding(tuple(first), integrator, difference, True, span, time_scale=ode.time_scale,
                               form=form)
    return None


def _difference(ode: OdeModel, x: torch.Tensor, integrator: Integrator, span: tuple[float, float],
                 scale: float | None, model_out: torch.Tensor, seed: int, form: LoopForm | None = None) -> float:
    """|model - integrator over ``span``|, f's time scaled by ``scale`` (``TimeScaled``) where given, the
    loop read in ``form`` where given (the model not yet read so)."""
    ends = torch.tensor(span, dtype=torch.float64, device=x.device)

    def solve(p):
        field, h0 = p.field, p.h0
        if scale is not None:
            field = field.wrapped(lambda f: TimeScaled(f, scale, field.order))
        if form is None:
            return integrator.solve(field, h0, ends).ys
        field = field.wrapped(lambda f: form.wrap(f, field.order))
        layout = ode.layout
        # the loop's start of the state, not of the per-sample columns that ride with it
        start = form.start(h0) if not layout.context else \
            layout.pack(form.start(layout.unpack(h0)), layout.context_of(h0))
        ys = integrator.solve(field, start, ends).ys
        return form.finish(field, ends[-1], ys[-1]).unsqueeze(0)
    return _off_by(ode, x, solve, model_out, seed)


def _off_by(ode: OdeModel, x: torch.Tensor, solve, model_out: torch.Tensor, seed: int) -> float:
    """|model - dise's run with ``solve``|; inf where f refuses what a reading gives it (a time the loop
    never calls it at, σ = 0 of a denoiser; a float64 state where the loop casts to float32)."""
    with torch.no_grad(), seeded(seed, x.device):
        try:
            return max_abs(ode.forward_with(x, solve), model_out)
        except InputError:
            raise
        except Exception:  # noqa: BLE001 - not that reading
            return float("inf")


OUTSIDE = 10.0             # f called beyond this many times the grid's reach: its time perhaps on another scale
MAX_LISTED = 64            # a loop refused lists f's call times up to this many (to build --t-span from)
GRID_ENDS = (0.0, 1.0)      # where a loop's last Euler step may end: a flow's two ends (or dise's grid's end)
NODE_TOLERANCE = 1e-3       # a call off its node by more than this share of the step: not that method (nodes differ by 1/6)


def _on_span(grid: tuple[float, ...], start: float, end: float) -> tuple[float, ...] | None:
    """``grid`` with its ends set to the span the user gave, where they are those up to float32 round-off
    of f's call times (None where they are not)."""
    close = all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in ((grid[0], start), (grid[-1], end)))
    return (start, *grid[1:-1], end) if close else None


def _grids_of_calls(times: list[float], last_ends: tuple[float, ...]) -> list[tuple[type, tuple[float, ...]]]:
    """Each fixed-step method whose nodes f's calls fall on, one step per interval, with the grid those
    steps make: a step starts at its first call and ends where its nodes put it (the next step's start
    where there is one). Euler's one call a step leaves the last step's end open: one of ``last_ends`` (the
    span's end, or 0 or 1), whichever lies beyond the last call."""
    found = []
    for cls in LOOP_METHODS:
        nodes = cls.tableau.c
        stages = len(nodes)
        if len(times) % stages or len(times) < stages:
            continue
        steps = [times[i:i + stages] for i in range(0, len(times), stages)]
        starts = [step[0] for step in steps]
        # a step ends at the next one's start; the last where its widest node puts it (Euler's: unknown)
        widest = max(range(stages), key=lambda j: nodes[j])
        last, final = steps[-1], None
        if nodes[widest] == 1:
            final = last[widest]                   # a call at the step's end (Heun's, RK4's): its time exactly
        elif nodes[widest] > 0:
            final = last[0] + (last[widest] - last[0]) / nodes[widest]
        if not _on_nodes(steps, nodes, [*starts[1:], final]):
            continue
        if final is not None:
            found.append((cls, (*starts, final)))
            continue
        direction = starts[1] - starts[0] if len(starts) > 1 else None
        for end in dict.fromkeys(last_ends):
            if end != last[0] and (direction is None or (end - last[0]) * direction > 0):
                found.append((cls, (*starts, end)))
    return found


def _on_nodes(steps: list[list[float]], nodes: tuple[float, ...], ends: list[float | None]) -> bool:
    """Every call of every step at its start plus its node's share of the step (steps whose end is not
    known are only checked to move one way)."""
    starts = [step[0] for step in steps]
    moves = [b - a for a, b in zip(starts, starts[1:])]
    if moves and not (all(m > 0 for m in moves) or all(m < 0 for m in moves)):
        return False
    for step, start, end in zip(steps, starts, ends):
        if end is None:
            continue
        width = end - start
        if width == 0 or any(abs(t - (start + c * width)) > NODE_TOLERANCE * abs(width) for t, c in zip(step, nodes)):
            return False
    return True


@dataclass
class _Watched:
    """What one forward showed of the loop's calls of f."""

    times: list[float] | None = None      # each call's time in the loop's own time (None: not one per call)
    extra: tuple[str, ...] = ()           # arguments beyond a time and a state (the loop's conditioning)
    f_dtype: torch.dtype | None = None    # the coarsest dtype f returned
    rows: int = 0                         # the most rows f was given
    integer_times: list[int] | None = None   # the calls' times where f was given them as an integer tensor


def _call_times(ode: OdeModel, func: nn.Module, x: torch.Tensor, seed: int) -> _Watched:
    """The calls of ``func`` in one forward of the model on ``x``: their times (None where a call's
    time differs between rows, or cannot be read), the arguments beyond a time and a state the loop
    passes f, f's output dtype and the most rows it was given."""
    times: list[float | None] = []
    integers: list[int] = []
    extra: dict[str, None] = {}
    dtypes: set[torch.dtype] = set()
    rows = [0]
    time_index = 0 if ode.field.order == "t,x" else 1

    shape = getattr(ode, "call_shape", None)
    held: dict[Any, dict] = {}

    def state_and_time(args, kwargs):
        if shape is not None:           # the loop's conditioning read (dise_cli.conditioning): held the same
            call = (tuple(args), dict(kwargs))
            try:
                values = {name: slot_value(call, s) for s, name in shape.held}
                state, value = slot_value(call, shape.state_at), slot_value(call, shape.time_at)
            except (IndexError, KeyError):
                extra["arguments other than its first call's"] = None
                return None, None
            # a guided pair's calls alternate their conditioning: each is held as its place in the pair's; a
            # loop guiding on some calls only holds its doubled calls' and its others' each
            limited = shape.guidance is not None and shape.guidance.limited
            kind = (shape.is_guided_call(call, len(x)) if limited else len(times) % shape.calls_per_stage)
            pattern = held.setdefault(kind, values)
            extra.update(dict.fromkeys(f"'{name}' changes between calls" for name, v in values.items()
                                       if not same_value(v, pattern[name])))
            doubled = shape.guidance is not None and shape.guidance.kind == "doubled" and \
                isinstance(state, torch.Tensor) and state.ndim and len(state) == 2 * len(x)
            return (state[:len(state) // 2] if doubled else state), value
        state = args[1 - time_index] if len(args) > 1 else next(
            (v for k, v in kwargs.items() if k not in TIME_NAMES and isinstance(v, torch.Tensor)), None)
        value = args[time_index] if len(args) > time_index else next(
            (kwargs[name] for name in TIME_NAMES if name in kwargs), None)
        given = [k for k, v in kwargs.items() if v is not None]
        # a None beyond the two (EDM's class_labels=None) is what f's default gives it when dise calls it
        passed = [i for i in range(2, len(args)) if args[i] is not None]
        if min(len(args), 2) + len(passed) + len(given) > 2:
            others = [k for k in given if k not in TIME_NAMES][max(0, 1 - len(args)):] if len(args) < 2 else given
            extra.update(dict.fromkeys([*(f"argument {i + 1}" for i in passed), *others]))
        return state, value

    def record(_module, args, kwargs):
        state, value = state_and_time(args, kwargs)
        if isinstance(state, torch.Tensor) and state.ndim:
            rows[0] = max(rows[0], len(state))
        times.append(one_time(value))
        if isinstance(value, torch.Tensor) and value.numel() and not value.is_floating_point() \
                and value.dtype != torch.bool:
            integers.append(int(value.reshape(-1)[0]))

    def output(_module, _args, out):
        if shape is not None:
            try:
                out = pick_output(out, shape.output_at)
            except (IndexError, KeyError, TypeError):
                return
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            dtypes.add(out.dtype)
    handles = [func.register_forward_pre_hook(record, with_kwargs=True), func.register_forward_hook(output)]
    try:
        with torch.no_grad(), seeded(seed, x.device):
            ode.run(x)
    finally:
        for handle in handles:
            handle.remove()
    if shape is not None and shape.calls_per_stage == 2:
        # a guided pair is one call of the guided f, at the pair's time
        paired = len(times) % 2 == 0 and times[0::2] == times[1::2]
        times = times[0::2] if paired else [None]
    watched = _Watched(extra=tuple(extra), f_dtype=max(dtypes, key=lambda d: torch.finfo(d).eps, default=None),
                       rows=rows[0], integer_times=integers or None)
    if not any(t is None for t in times):
        watched.times = times if ode.time_scale is None else [t / ode.time_scale for t in times]
    return watched


def _grid_text(grid: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{t:.4g}" for t in grid) + "]" if len(grid) <= 12 else \
        f"[{grid[0]:.4g}, {grid[1]:.4g}, ..., {grid[-1]:.4g}] ({len(grid)} points)"


def _times_text(times: list[float]) -> str:
    if len(times) <= 4:
        return ", ".join(f"{t:.4g}" for t in times)
    return f"{times[0]:.4g}, {times[1]:.4g}, ..., {times[-1]:.4g}"
