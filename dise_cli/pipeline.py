"""Glue shared by the commands: settings from flags and dise.yaml -> a loaded model read by its solve,
its candidates (the model's own solver as the baseline), the fidelity check, and data."""
from __future__ import annotations

import json
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from dise_cli.config import positive_int
from dise_cli.datasets import Dataset, load_data
from dise_cli.errors import InputError, UsageError, first_line
from dise_cli.figures import check_figure, read_figure_data
from dise_cli.sharding import Shard
from dise_cli.fidelity import FIDELITY_SAMPLES, Fidelity, check_fidelity, fidelity_error
from dise_cli.integrators import CHEAP_CANDIDATES, DEFAULT_CANDIDATES, Integrator, parse_candidates
from dise_cli.integrators.emulation import Emulation, emulate
from dise_cli.judging import Task, binary_threshold, check_labels, class_labels, detect_task, is_single_logit
from dise_cli.loading import LoadedModel, load_model
from dise_cli.loops import find_loop_solver
from dise_cli.odemodel import OdeModel, OwnSolver
from dise_cli.profiling import ProfileRun, Reference, profile_candidates
from dise_cli.reading import read_model
from dise_cli.sources import Inputs

TASK_PROBE_ROWS = 64     # rows the task is read from (whether one output is a logit or a probability)


@dataclass(frozen=True)
class ProfileSettings:
    """``dise profile``'s settings; each default is written here only."""

    candidates: str | None = None       # None: euler:steps=1, rk4:steps=1 and the model's own solver
    batch_size: int = 256
    limit: int | None = None            # profile this many samples drawn with ``seed`` (None: all)
    seed: int = 0
    task: str | None = None             # classification | regression (None: from the labels)
    metric: str | None = None           # regression error: mse, mae, l2 or package.module:fn (None: mse)
    time_major: bool | None = None      # targets [T, N, ...] (None: from the shapes)
    figure: str | None = None           # a task figure beside Γ: nlp (density) or energy (sampler); figures.py
    figure_data: str | None = None      # held-out samples of the target distribution (figure energy), key x
    shard: str | None = None            # "K/N": profile the K-th of N shards only (sharding.py; dise merge)

    def check(self) -> None:
        check_figure(self.figure, self.figure_data)
        if self.metric is not None and self.task == "classification":
            raise UsageError(f"--metric {self.metric}: an error metric is for models judged by an error (regression, "
                             f"density, sampling); --task classification judges predicted classes")
        if self.shard is not None:
            Shard.parse(self.shard)
        positive_int(self.batch_size, "--batch-size")
        if self.limit is not None:
            positive_int(self.limit, "--limit")


@dataclass
class Candidates:
    """The integrators to compare, which of them is the baseline, and what dise knows of the model's own."""

    integrators: list[Integrator]
    baseline: int
    own: Emulation | None            # the model's own solver as dise runs it (None: no solve seen)
    notes: list[str]

    @property
    def specs(self) -> list[str]:
        return [c.spec for c in self.integrators]

    @property
    def reproduction(self) -> Integrator:
        """What the fidelity check reproduces the model with: its own solver as dise runs it, else the baseline."""
        if self.own is not None and self.own.integrator is not None:
            return self.own.integrator
        return self.integrators[self.baseline]

    @property
    def reproduction_exact(self) -> bool:
        """The reproduction runs the model's own method (or dise saw no solver call to differ from)."""
        return self.own is None or (self.own.integrator is not None and self.own.exact)


@dataclass
class Opened:
    loaded: LoadedModel
    data: Dataset | None
    model: OdeModel
    device: torch.device
    candidates: Candidates
    probe: torch.Tensor                 # the few samples the model was read on, on its device
    fidelity: Fidelity | None = None
    data_note: str = ""                 # what dise left out of the data, for people

    @property
    def name(self) -> str:
        return f"model '{self.loaded.spec.path}'"

    @property
    def notes(self) -> list[str]:
        """What a person should know about how dise read the file, the model and the data."""
        return [n for n in (self.loaded.note, *self.candidates.notes, self.model.output_note, self.data_note,
                            self.model.grid_note) if n]


def open_inputs(inputs: Inputs, *, candidates: str | None = None, check: bool = True) -> Opened:
    """Load model and data, read the model by its solve on a few samples, choose the candidates and
    run the fidelity check (``InputError`` when dise does not reproduce the model)."""
    if inputs.data is None:
        raise UsageError("--data: this command needs data; pass --data FILE or --data-factory package.module:fn")
    loaded = load_model(inputs.model)
    data = load_data(inputs.data)
    module = loaded.module.to(inputs.device)
    name = f"model '{inputs.model.path}'"
    grid = None if inputs.t_span is None else torch.tensor(inputs.t_span, dtype=torch.float64)
    x = probe_rows(data.x).to(inputs.device)
    model = read_model(module, x, data_name=data.name, solve=inputs.solve, ode_block=inputs.ode_block, t_span=grid,
                       data_t=data.t, model_name=name, join=data.join, output_key=inputs.output_key)
    if model.how == "attributes" and model.own is None:
        model = _read_loop(model, x, grid, lambda **again: read_model(
            module, x, data_name=data.name, solve=inputs.solve, ode_block=inputs.ode_block, data_t=data.t,
            model_name=name, join=data.join, output_key=inputs.output_key, **again), name)
    data_note = ""
    if data.per_sample_grid and model.how != "bare":
        if model.model_takes_grid:
            raise InputError(f"data '{data.name}': 't' gives every sample its own time grid, which dise uses for a "
                             f"model that is a bare vector field; {name} takes one grid [T] as its time argument")
        # a model that passes its own grid to its solver has no use for the data's: it is left out
        data = dataclasses.replace(data, t=None)
        data_note = (f"data '{data.name}': 't' (a time grid per sample) is left out; {name} passes its own grid to "
                     f"its solver")
    opened = Opened(loaded=loaded, data=data, model=model, device=inputs.device,
                    candidates=choose_candidates(model, candidates), probe=x, data_note=data_note)
    if check:
        opened.fidelity = check_model(opened)
        raise_if_unfaithful(opened)
    return opened


def check_model(opened: Opened) -> Fidelity | None:
    """The fidelity check on the probe samples; the user's code failing under dise's solve is an
    ``InputError`` naming the model."""
    chosen = opened.candidates
    try:
        return check_fidelity(opened.model, opened.probe, chosen.reproduction, exact=chosen.reproduction_exact)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code failing under dise's solve
        raise InputError(f"{opened.name} fails when dise solves it ({type(exc).__name__}: {first_line(exc)})") from None


def raise_if_unfaithful(opened: Opened) -> None:
    """Exit 2 when dise's solve does not reproduce the model, with what to try instead."""
    fidelity = opened.fidelity
    if fidelity is not None and not fidelity.passed:
        raise fidelity_error(fidelity, opened.model, opened.name, override_hint(opened.model, opened.candidates))


def reading_notes(opened: Opened) -> list[str]:
    """What a person should know up front about how dise read the model (and, for a model without a
    factory, whether export will need one)."""
    notes = [f"note: {note}" for note in opened.notes]
    if not opened.loaded.rebuildable:                   # no factory to fall back on: find out now whether programs will do
        from dise_cli.exporting import export_plan
        plan = export_plan(opened.model, opened.loaded, opened.probe)
        if plan["needs_arch"]:
            notes.append(f"note: {plan['note']}")
    return notes


def _read_loop(model: OdeModel, x: torch.Tensor, grid: torch.Tensor | None, read: Callable[..., OdeModel],
               name: str) -> OdeModel:
    """A model read by its attributes, whose loop dise identifies by its calls of f: its fixed-step
    method becomes its own solver (over the loop's own grid, between the ends ``--t-span`` gives); a loop
    over a span, time scale or form of its own (a denoiser's, ``dise_cli.loopform``) is read again over it
    (``read(t_span=, time_scale=, loop_form=)``).
    ``InputError`` where no method reproduces the loop."""
    found = find_loop_solver(model, x, own_grid=grid is None or len(grid) == 2, given_span=grid is not None)
    if found is not None and found.span is not None:
        # Flux's loop from 1 down to 0, a scheduler's sigmas with f called at sigma * 1000: as --t-span would
        model = read(t_span=torch.tensor(found.span, dtype=torch.float64), time_scale=found.time_scale,
                     loop_form=found.form)
        model.t_span_source = "the loop's calls of f"
        found = find_loop_solver(model, x)
    if found is None:
        return model                               # not a fixed-step loop: dise's guess, with a note
    if found.refused:
        raise InputError(f"{name}: {found.note}")
    if found.integrator is None:
        raise InputError(f"{name}: {found.note}; dise misreads the model's loop (its grid, or the state it starts "
                         f"from): {LOOP_HINT}")
    shape = getattr(model, "call_shape", None)
    model.own = OwnSolver(library="loop", method=found.integrator.spec, rtol=None, atol=None,
                          options={"reproduced": found.exact},
                          note=found.note if shape is None else f"{found.note}; {shape.note}")
    return model


def probe_rows(x: torch.Tensor, n: int = FIDELITY_SAMPLES, scan: int = 4096) -> torch.Tensor:
    """The first ``n`` samples with finite inputs: what dise reads the model on and checks it with (a
    sample that is NaN from the start fails any solver, the model's own included)."""
    head = x[:scan]
    if not head.is_floating_point():
        return head[:n]
    finite = torch.isfinite(head.reshape(len(head), -1)).all(1)
    rows = torch.nonzero(finite).flatten()[:n]
    return head[rows] if len(rows) else head[:n]


MANY_INTERVALS = 8      # a grid of more intervals than this makes fixed-step defaults costly: said so


def choose_candidates(model: OdeModel, text: str | None) -> Candidates:
    """``text`` parsed (the baseline: the model's own solver if listed, else the first adaptive
    candidate, else the last), or by default Euler and RK4 with one step and the model's own solver."""
    own = None if model.own is None else emulate(
        model.own.library, model.own.method,
        model.own.rtol if model.own.sample_rtol is None else model.own.sample_rtol,
        model.own.atol if model.own.sample_atol is None else model.own.sample_atol, model.own.options,
        decreasing=bool(model.t_span[0] > model.t_span[-1]))
    notes = [model.own.note] if model.own is not None and model.own.note else []
    if own is not None and own.note:
        notes.append(f"the model's own solver is {model.own.library}'s {own.method}: {own.note}")
    if text is None:
        if own is not None and own.integrator is None:
            raise UsageError(f"--candidates: the model solves with {model.own.library}'s '{own.method}' ({own.note}); "
                             f"name the integrators to compare, e.g. --candidates "
                             f"'{CHEAP_CANDIDATES},dopri5:rtol={_num(model.own.rtol)},atol={_num(model.own.atol)}'")
        text = DEFAULT_CANDIDATES if own is None else \
            ",".join([CHEAP_CANDIDATES, *_fewer_steps(own.integrator, model.t_span), own.integrator.spec])
        intervals = len(model.t_span) - 1
        if intervals >= MANY_INTERVALS:
            # SiT's sample_ode solves on linspace(0, 1, 50) and keeps the last point: a step per interval
            # is the least a fixed-step candidate costs, so the cheap defaults are not cheap
            span = float(model.t_span[-1] - model.t_span[0])
            notes.append(f"the model's grid has {intervals + 1} points, and fixed-step candidates step every "
                         f"interval ({intervals} NFE at least); for fewer, name step_size candidates, e.g. "
                         f"--candidates 'euler:step_size={abs(span) / 4:g},rk4:step_size={abs(span) / 2:g},"
                         f"{own.integrator.spec if own is not None else 'dopri5:rtol=1e-3,atol=1e-3'}'")
    integrators = _unique(parse_candidates(text))
    specs = [c.spec for c in integrators]
    if own is not None and own.integrator is not None and own.integrator.spec in specs:
        baseline = specs.index(own.integrator.spec)
    else:
        adaptive = [k for k, c in enumerate(integrators) if c.adaptive]
        baseline = adaptive[0] if adaptive else len(integrators) - 1
        if own is not None:
            notes.append(f"the model's own solver is not among the candidates; {specs[baseline]} is the baseline")
    if own is None:
        notes.append(f"dise saw no solver call, so the baseline {specs[baseline]} is its choice, not the model's")
    notes += _past_the_end(model, integrators)
    return Candidates(integrators=integrators, baseline=baseline, own=own, notes=notes)


def _fewer_steps(integrator: Integrator, t_span: torch.Tensor) -> list[str]:
    """A fixed-step own solver of 4 steps or more (rectified flow's 100 Euler steps, flow_matching's
    midpoint at step_size 0.05, EDM's σ's, Flux's shifted timesteps): the same method with half the steps,
    and with a quarter from 16 steps: the fewer steps a user of that sampler would try first. A schedule
    of its own keeps every second (fourth) point, its ends kept."""
    cls = type(integrator)
    grid, steps, size = (getattr(integrator, name, None) for name in ("grid", "steps", "step_size"))
    if grid is not None:
        count = len(grid) - 1
        make = lambda every: cls(grid=(*grid[:-1:every], grid[-1]))                        # noqa: E731
    elif size is not None:
        count = math.ceil(float((t_span[-1] - t_span[0]).abs()) / size - 1e-9)
        make = lambda every: cls(step_size=size * every)                                    # noqa: E731
    elif steps is not None:
        count = steps
        make = lambda every: cls(steps=steps // every)                                      # noqa: E731
    else:
        return []
    return [make(every).spec for every, least in ((2, 4), (4, 16)) if count >= least]


def _past_the_end(model: OdeModel, integrators: list[Integrator]) -> list[str]:
    """A denoiser's velocity (x - D) / σ is not finite below σ = 0, and torchdiffeq's adaptive steps
    pass the solve's end (σ_min) before interpolating back: said for each candidate that does."""
    form = model.loop_form
    if form is None or not form.denoiser:
        return []
    end = float(model.t_span[-1])
    passing = [c.spec for c in integrators if c.adaptive and not getattr(c.control, "lands_on_outputs", True)
               and not any(abs(m - end) <= 1e-9 * max(1.0, abs(end)) for m in getattr(c, "step_t", ()))]
    return [f"{spec} steps past the solve's end, σ = {end:g}, before interpolating back (torchdiffeq's way) and may "
            f"call the denoiser below σ = 0, where (x - D) / σ is not finite; add step_t={end:g} to stop its steps "
            f"there" for spec in passing]


def _unique(integrators: list[Integrator]) -> list[Integrator]:
    seen: set[str] = set()
    return [c for c in integrators if not (c.spec in seen or seen.add(c.spec))]


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else "1e-3"


LOOP_HINT = ("give --t-span for the span the loop covers; a step before the loop that changes its state (a scale, "
             "added noise) is one dise cannot see: name the block that takes the loop's own start with --ode-block")


def override_hint(model: OdeModel, chosen: Candidates) -> str:
    if model.own is not None and model.own.is_loop:
        return f"{model.own.note}: {LOOP_HINT}"
    if model.how == "attributes":
        return ("dise cannot see this model's solve; name the block with --ode-block, or put the model's own solver "
                "in --candidates")
    hints = []
    if len(model.solves) > 1:
        hints.append("route another of its solves with --solve N (dise inspect lists them)")
    if chosen.own is not None and chosen.own.note:
        hints.append(f"dise runs the model's {chosen.own.method} as near as it can ({chosen.own.note}), and "
                     f"the difference may be what that leaves out")
    if chosen.own is None or chosen.own.integrator is None:       # else the check runs the model's own anyway
        hints.append("give the model's own solver in --candidates")
    return "; ".join(hints) or "run dise inspect for what dise found"


def _returns_state(sample: Any, solved: list[torch.Tensor], ode: OdeModel) -> bool:
    """Whether the model's output is its ODE state (the last state, or the trajectory, of a component):
    a sampler or a flow, whose outputs are judged by their error, never by an argmax."""
    if not solved or not isinstance(sample, torch.Tensor):
        return False
    parts = ode.layout.unpack_trajectory(solved[-1])
    for part in parts if isinstance(parts, tuple) else (parts,):
        states = [part[-1], part.transpose(0, 1)]
        if ode.layout.blocks > 1:        # a state in blocks (CFG by batch doubling): one block of it
            states += list(part[-1].chunk(ode.layout.blocks))
        for state in states:
            if state.shape == sample.shape and torch.equal(state.to(sample.dtype), sample):
                return True
    return False


def choose_task(opened: Opened, task: str | None, note: Callable[[str], None] | None = None) -> tuple[Task, Any]:
    """The task (``task`` where given, else read from the labels and from the model's outputs on a few
    rows, solved by the first candidate) and those outputs; ``InputError`` for labels the model cannot
    be judged by. ``note`` hears how float labels and a probability output were read."""
    ode, data = opened.model, opened.data
    solved = []

    def solve(p):
        solved.append(opened.candidates.integrators[0].solve(p.field, p.h0, p.t).ys)
        return solved[-1]
    with torch.no_grad():
        sample = ode.forward_with(data.x[:TASK_PROBE_ROWS].to(opened.device), solve)
    if task is None:
        task = detect_task(data.y, sample, has_decoder=ode.kind in ("sequential", "nested", "whole"),
                           input_shape=[tuple(s) for s in data.join.shapes] if data.join is not None
                           else tuple(data.x.shape[1:]), returns_state=_returns_state(sample, solved, ode))
        if task == "classification" and data.y is not None and data.y.is_floating_point() and note is not None:
            note(f"labels in '{data.name}' are floats holding class indices (as BCE training keeps them): judged as "
                 f"a classifier ({'logit > 0' if is_single_logit(sample) else 'argmax'}); --task regression judges "
                 f"the outputs by their error instead")
    labels = class_labels(task, data.y)
    check_labels(task, labels, sample, data.name)
    threshold = binary_threshold(sample, labels) if task == "classification" else 0.0
    if threshold and note is not None:
        note(f"the model's one output lies in [0, 1] and fits the labels in '{data.name}' as a probability: "
             f"class 1 where it is above {threshold:g} (a logit would be above 0)")
    return Task(task, threshold), sample


def profile_model(opened: Opened, *, rows: torch.Tensor, batch_size: int,
                  task: str | None = None, metric: str | None = None, time_major: bool | None = None, seed: int = 0,
                  progress: Callable[[int], None] | None = None, figure: str | None = None,
                  figure_data: str | None = None, shard: tuple[int, int] = (0, 1),
                  note: Callable[[str], None] | None = None) -> ProfileRun:
    """``dise profile`` as a function: choose the task (labels' dtype unless given), judge every
    candidate on ``rows`` of the data (shard ``(k, n)``'s batches of them only), and stamp the profile
    with what produced it. ``note`` hears how float labels were read."""
    ode, device = opened.model, opened.device
    candidates, base = opened.candidates.integrators, opened.candidates.baseline
    if task is None and (figure is not None or metric is not None):
        task = "regression"             # a figure (NLP, energy) or a metric says the outputs are judged by an error
    chosen, sample = choose_task(opened, task, note)
    task = chosen.name
    data = dataclasses.replace(opened.data, y=class_labels(task, opened.data.y))
    if figure is not None and task != "regression":
        raise UsageError(f"--figure {figure}: figures are for models judged by an error (regression, density, "
                         f"sampling); this one is a classifier")
    held_out = None if figure_data is None else read_figure_data(figure_data, sample[0].numel())
    judge = chosen.judge(metric)
    torch.manual_seed(seed)
    reference = Reference(candidates[base])
    run = profile_candidates(ode, data, candidates, judge, rows=rows, batch_size=batch_size, device=device,
                             baseline=base, time_major=time_major, reference=reference, progress=progress,
                             keep_outputs=figure is not None, seed=seed, shard=shard)
    run.profile.figure_data = held_out
    spec = opened.loaded.spec
    run.profile.meta.update({
        "model_sha256": opened.loaded.sha256, "data_sha256": data.sha256,
        "model": str(spec.path), "data": data.name, "arch": spec.arch or "", "ode_block": ode.block_path,
        "labels": "data" if data.y is not None else f"reference:{reference.spec}",
        "reference_dtype": reference.dtype if data.y is None else "",
        "metric": judge.metric_name if task == "regression" else "", "seed": str(seed),
        "reading": json.dumps(ode.record(), sort_keys=True),
        "notes": json.dumps(opened.notes),
        "figure": figure or "", "input_dim": str(int(data.x[0].numel())), "threshold": f"{chosen.threshold:g}",
    })
    return run
