"""Glue shared by the commands: settings from flags and dise.yaml -> a loaded model read by its solve,
its candidates (the model's own solver as the baseline), the fidelity check, and data."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from dise_cli.config import is_project_file, parse_t_span, pick, read_project, resolve_device
from dise_cli.datasets import Dataset, DataSpec, load_data
from dise_cli.errors import InputError, UsageError, first_line
from dise_cli.fidelity import FIDELITY_SAMPLES, Fidelity, check_fidelity, fidelity_error
from dise_cli.integrators import CHEAP_CANDIDATES, DEFAULT_CANDIDATES, Integrator, parse_candidates
from dise_cli.integrators.emulation import Emulation, emulate
from dise_cli.judging import Judge, check_labels, detect_task
from dise_cli.loading import LoadedModel, ModelSpec, load_model
from dise_cli.odemodel import OdeModel
from dise_cli.profiling import ProfileRun, Reference, profile_candidates
from dise_cli.reading import read_model


@dataclass(frozen=True)
class Inputs:
    """What identifies the model and data of a command, validated before anything loads."""

    model: ModelSpec
    data: DataSpec | None
    ode_block: str | None
    t_span: tuple[float, ...] | None
    device: torch.device
    solve: int | None = None


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
    fidelity: Fidelity | None = None


def read_config(model_arg: str, config_flag: str | None) -> tuple[dict[str, Any], str | None]:
    """The merged project settings, and the model path (None when the project file must name it)."""
    config: dict[str, Any] = {}
    if config_flag:
        config.update(read_project(config_flag))
    if is_project_file(model_arg):
        config.update(read_project(model_arg))
        return config, None
    return config, model_arg


def make_inputs(model_arg: str, config: dict[str, Any], model_path: str | None, *, arch: str | None,
                trust_pickle: bool | None, code_path: list[str] | None, ode_block: str | None,
                t_span: str | None, data: str | None, data_factory: str | None, x_key: str | None,
                y_key: str | None, device: str | None, solve: int | None = None) -> Inputs:
    path = model_path or config.get("model")
    if not path:
        raise UsageError(f"MODEL: project file '{model_arg}' has no 'model' key")
    paths = tuple(code_path or ()) + tuple(config.get("code_path") or ())
    grid = parse_t_span(t_span) if t_span is not None else parse_t_span(config.get("t_span"), "t_span in config")
    if data is not None or data_factory is not None:      # flags win over the file, as a pair
        data_path, factory = data, data_factory
    else:
        data_path, factory = config.get("data"), config.get("data_factory")
    if data_path and factory:
        raise UsageError("--data and --data-factory (or data and data_factory in the config): give one")
    data_spec = None
    if data_path or factory:
        data_spec = DataSpec(path=Path(data_path) if data_path else None,
                             factory=factory, x_key=pick(x_key, config, "x_key"),
                             y_key=pick(y_key, config, "y_key"), code_path=paths)
    return Inputs(
        model=ModelSpec(path=Path(path), arch=pick(arch, config, "arch"),
                        trust_pickle=bool(pick(trust_pickle, config, "trust_pickle", False)), code_path=paths),
        data=data_spec,
        ode_block=pick(ode_block, config, "ode_block"),
        t_span=None if grid is None else tuple(grid.tolist()),
        device=resolve_device(pick(device, config, "device")),
        solve=pick(solve, config, "solve"),
    )


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
                       data_t=data.t, model_name=name)
    if data.per_sample_grid and model.how != "bare":
        raise InputError(f"data '{data.name}': 't' gives every sample its own time grid, which dise uses for a model "
                         f"that is a bare vector field; {name} passes its own grid to its solver")
    chosen = choose_candidates(model, candidates)
    fidelity = None
    if check:
        try:
            fidelity = check_fidelity(model, x, chosen.reproduction, exact=chosen.reproduction_exact)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code failing under dise's solve
            raise InputError(f"{name} fails when dise solves it ({type(exc).__name__}: {first_line(exc)})") from None
        if fidelity is not None and not fidelity.passed:
            raise fidelity_error(fidelity, model, name, override_hint(model, chosen))
    return Opened(loaded=loaded, data=data, model=model, device=inputs.device, candidates=chosen, fidelity=fidelity)


def probe_rows(x: torch.Tensor, n: int = FIDELITY_SAMPLES, scan: int = 4096) -> torch.Tensor:
    """The first ``n`` samples with finite inputs: what dise reads the model on and checks it with (a
    sample that is NaN from the start fails any solver, the model's own included)."""
    head = x[:scan]
    if not head.is_floating_point():
        return head[:n]
    finite = torch.isfinite(head.reshape(len(head), -1)).all(1)
    rows = torch.nonzero(finite).flatten()[:n]
    return head[rows] if len(rows) else head[:n]


def choose_candidates(model: OdeModel, text: str | None) -> Candidates:
    """``text`` parsed (the baseline: the model's own solver if listed, else the first adaptive
    candidate, else the last), or by default Euler and RK4 with one step and the model's own solver."""
    own = None if model.own is None else emulate(model.own.library, model.own.method, model.own.rtol,
                                                 model.own.atol, model.own.options)
    notes = []
    if own is not None and own.note:
        notes.append(f"the model's own solver is {model.own.library}'s {own.method}: {own.note}")
    if text is None:
        if own is not None and own.integrator is None:
            raise UsageError(f"--candidates: the model solves with {model.own.library}'s '{own.method}' ({own.note}); "
                             f"name the integrators to compare, e.g. --candidates "
                             f"'{CHEAP_CANDIDATES},dopri5:rtol={_num(model.own.rtol)},atol={_num(model.own.atol)}'")
        text = DEFAULT_CANDIDATES if own is None else f"{CHEAP_CANDIDATES},{own.integrator.spec}"
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
    return Candidates(integrators=integrators, baseline=baseline, own=own, notes=notes)


def _unique(integrators: list[Integrator]) -> list[Integrator]:
    seen: set[str] = set()
    return [c for c in integrators if not (c.spec in seen or seen.add(c.spec))]


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else "1e-3"


def override_hint(model: OdeModel, chosen: Candidates) -> str:
    if model.how == "attributes":
        return ("dise cannot see this model's solve; name the block with --ode-block, or put the model's own solver "
                "in --candidates")
    hints = []
    if len(model.solves) > 1:
        hints.append("route another of its solves with --solve N (dise inspect lists them)")
    if chosen.own is None or not chosen.own.exact:
        hints.append("give the model's own solver in --candidates")
    return "; ".join(hints) or "run dise inspect for what dise found"


def profile_model(opened: Opened, *, rows: torch.Tensor, batch_size: int,
                  task: str | None = None, metric: str = "mse", time_major: bool | None = None, seed: int = 0,
                  progress: Callable[[int], None] | None = None) -> ProfileRun:
    """``dise profile`` as a function: choose the task (labels' dtype unless given), judge every
    candidate on ``rows`` of the data, and stamp the profile with what produced it."""
    ode, data, device = opened.model, opened.data, opened.device
    candidates, base = opened.candidates.integrators, opened.candidates.baseline
    with torch.no_grad():
        sample = ode.forward_with(data.x[:2].to(device), lambda p: candidates[0].solve(p.field, p.h0, p.t).ys)
    if task is None:
        task = detect_task(data.y, sample, has_decoder=ode.kind in ("sequential", "nested", "whole"))
    check_labels(task, data.y, sample, data.name)
    judge = Judge(task, metric)
    torch.manual_seed(seed)
    reference = Reference(candidates[base])
    run = profile_candidates(ode, data, candidates, judge, rows=rows, batch_size=batch_size, device=device,
                             baseline=base, time_major=time_major, reference=reference, progress=progress)
    spec = opened.loaded.spec
    run.profile.meta.update({
        "model_sha256": opened.loaded.sha256, "data_sha256": data.sha256,
        "model": str(spec.path), "data": data.name, "arch": spec.arch or "", "ode_block": ode.block_path,
        "labels": "data" if data.y is not None else f"reference:{reference.spec}",
        "metric": judge.metric_name if task == "regression" else "", "seed": str(seed),
        "reading": json.dumps(ode.record(), sort_keys=True),
        "notes": json.dumps(opened.candidates.notes),
    })
    return run
