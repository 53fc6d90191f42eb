"""What ``dise inspect`` reports: how dise read the model (the solve it watched, or the block it found
by attributes), the model's own solver and dise's baseline for it, f's calling convention, the
state, the fidelity check, whether export needs ``--arch``, parameters and the cost of one f call."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict

import torch
from torch import nn

from dise_cli.fidelity import Fidelity, reading_line
from dise_cli.loading import LoadedModel
from dise_cli.odemodel import OdeModel, Problem
from dise_cli.provenance import PROVENANCE_KEY, made_with
from dise_cli.reading import plain

SCHEMA_VERSION = 2


def _params(modules: list[nn.Module] | nn.Module | None, exclude: set[int] = frozenset()) -> int:
    if modules is None:
        return 0
    modules = [modules] if isinstance(modules, nn.Module) else modules
    seen: set[int] = set(exclude)
    total = 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def read_by(model: OdeModel) -> str:
    if model.how == "traced":
        info = model.solves[model.target]
        return f"watching {info.library}.{info.entry} called at {info.where}"
    if model.how == "attributes":
        return "block attributes (dise saw no torchdiffeq or torchdyn call)"
    return "the model is the vector field f itself"


def describe_model(opened, fidelity: Fidelity | None, export: dict, repeats: int = 10) -> dict:
    """A dict with stable keys (the README lists them)."""
    model: OdeModel = opened.model
    f_ids = {id(p) for m in model.func_modules for p in m.parameters()}
    f_params = _params(model.func_modules)
    if model.kind == "sequential":
        encoder, decoder, rest = _params(model.encoder), _params(model.decoder), None
    elif model.kind == "bare":
        encoder, decoder, rest = 0, 0, None
    else:
        encoder = decoder = None
        rest = _params(model.module, f_ids)
    cands = opened.candidates
    own = model.own
    info = {
        "schema_version": SCHEMA_VERSION,
        "read_by": read_by(model),
        "reading": reading_line(model),
        "kind": model.kind,
        "splittable": model.splittable,
        "inputs": None if model.join is None else model.join.describe(),
        "ode_block": model.block_path or "(the model itself)",
        "ode_function": model.func_description,
        "ode_function_class": model.func_class,
        "solves": [_solve_dict(s, k == model.target) for k, s in enumerate(model.solves)],
        "state": model.layout.describe(),
        "per_sample_tensors": None if model.field.context is None else model.field.context.describe(),
        "h0_shape": list(model.h0_shape),
        "t_span": [float(v) for v in model.t_span],
        "t_span_source": getattr(model, "t_span_source", ""),
        "time_scale": model.time_scale,
        "loop_form": None if model.loop_form is None else model.loop_form.to_dict(),
        "conditioning": model.record()["conditioning"],
        "time_mode": model.field.mode.value,
        "scalar_time": model.field.scalar_time,
        "arg_order": model.field.order,
        "own_solver": None if own is None else {"library": own.library, "method": own.method,
                                                "rtol": plain(own.rtol), "atol": plain(own.atol),
                                                "options": {k: plain(v) for k, v in own.options.items()}},
        "baseline": cands.integrators[cands.baseline].spec,
        "baseline_exact": bool(cands.own is not None and cands.own.exact
                               and cands.own.integrator.spec == cands.integrators[cands.baseline].spec
                               and own.options.get("reproduced", True)),   # a loop: only where it was reproduced
        "candidates": cands.specs,
        "notes": opened.notes,
        "fidelity": None if fidelity is None else fidelity.to_dict(),
        "export": export,
        "parameters": {"encoder": encoder, "ode_function": f_params, "decoder": decoder, "encoder_and_decoder": rest},
        "f_call": None,
        PROVENANCE_KEY: made_with(opened.device),
    }
    rows = torch.arange(min(64, len(opened.data)))
    x, t = opened.data.x[rows].to(opened.device), opened.data.grids(rows)
    with torch.no_grad():
        info["f_call"] = _f_cost(model.encode(x, None if t is None else t.to(opened.device)), repeats)
    return info


def describe_file(loaded: LoadedModel) -> dict:
    """What can be said without data: the file and its parameters (reading the solve needs inputs)."""
    return {"schema_version": SCHEMA_VERSION, "read_by": None, "model": str(loaded.spec.path), "format": loaded.format,
            "class": type(loaded.module).__name__, "parameters": {"total": _params(loaded.module)},
            PROVENANCE_KEY: made_with("cpu")}       # files load onto the CPU; nothing else runs


def _solve_dict(info, routed: bool) -> dict:
    d = asdict(info)
    d["routed"] = routed
    return d


@torch.no_grad()
def _f_cost(problem: Problem, repeats: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode
    h0 = problem.h0
    t = problem.t.reshape(-1)[0].to(h0.device, h0.dtype)
    field = problem.field
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            field(t, h0)
        flops = counter.get_total_flops() // max(len(h0), 1)
    except Exception:  # noqa: BLE001 - some fields (autograd inside f) do not count; the time still does
        flops = None
    times = []
    for _ in range(repeats + 1):
        if h0.device.type == "cuda":
            torch.cuda.synchronize(h0.device)
        began = time.perf_counter()
        field(t, h0)
        if h0.device.type == "cuda":
            torch.cuda.synchronize(h0.device)
        times.append(time.perf_counter() - began)
    median = statistics.median(times[1:])
    return {"batch": len(h0), "flops_per_sample": flops,
            "seconds_per_call": median, "seconds_per_sample": median / len(h0)}
