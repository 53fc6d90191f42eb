"""Speed and NFE of per-sample adaptive solves: dise vs a per-sample torchdiffeq loop vs torchode.

Run from the repository root:

    python benchmarks/profile_speed.py                      # full run (slow on a CPU)
    python benchmarks/profile_speed.py --mlp-samples 256 --mnist-samples 50 --loop-samples 20
    python benchmarks/profile_speed.py --device cuda --json speed.json
    python benchmarks/profile_speed.py --problems mlp --methods all    # every adaptive method

DOPRI5 gets every check below. With ``--methods``, every other adaptive method (bosh3,
adaptive_heun, fehlberg2, dopri8 with torchdiffeq's control; tsit5 with torchdyn's) is timed side by
side on the same problem: dise batched, the per-sample loop of the library that defines it
(torchdiffeq, or torchdyn for tsit5, where installed), and torchode where torchode has the method
(Dopri5, Tsit5, Heun for adaptive_heun); time per NFE and per attempted step, and NFE agreement
with the loop.

Two problems, float32, rtol = atol = 1e-3, every sample with its own step size:

- ``mlp``: a small MLP ODE f(t, h) = s * MLP([t, h]) (2 -> 64 -> 64 -> 2, tanh, fixed seed) on
  random initial states;
- ``mnist``: the sample ODE-Net's ODE block (``sample_models/mnist_odenet``) on the encoded test
  images, h0 of shape [N, 64, 6, 6].

Three solvers each:

1. dise: ``Dopri5.solve(VectorField.detect(f, h0, t), h0, t)`` on the whole set (or in chunks of
   ``--batch-size``: by default the whole set, but 256 MNIST images at a time on a CPU), detection
   included in the time;
2. torchdiffeq: ``odeint(f, h0[i:i+1], t, method='dopri5')`` in a Python loop, one sample at a
   time. It is slow, so it runs on the first ``--loop-samples-*`` samples only and its time per
   sample is extrapolated to the full set. Its NFE (calls of f, counted per sample) must equal
   dise's for every sample it solved; on the MLP the same check is repeated in float64 at a tight
   tolerance. As a noise floor for the float32 check, the loop runs once more with every h0
   nudged by one ulp: samples whose NFE that changes hinge on round-off, which a batched f (a
   different GEMM blocking) can flip as well;
3. torchode: batched ``Dopri5`` with an ``IntegralController`` (optional dependency). Its step
   control differs from torchdiffeq's, so only time and NFE statistics are compared. Its
   per-sample NFE is 2 + 6 * attempted steps; every row of a batch is nevertheless evaluated until
   the slowest sample finishes ("evals per row").

Batched timings are the median of ``--repeats`` rounds after one warm-up run each; dise and
torchode alternate within each round, so both see the same machine load. On CUDA the device is
synchronised before the clock is read.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from safetensors.torch import load_file  # noqa: E402
from torchdiffeq import odeint  # noqa: E402

from dise_cli.integrators import METHODS, Dopri5, EmbeddedRK, TimeMode, VectorField  # noqa: E402
from sample_models.mnist_odenet.model import build as build_mnist_model  # noqa: E402

try:
    import torchode
except ImportError:  # benchmark-only dependency
    torchode = None

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MNIST_DIR = REPO_ROOT / "sample_models" / "mnist_odenet"
TOL = 1e-3
MAX_MISMATCHES_SHOWN = 10
TARGETS = {  # minimum speedups of dise; NFE agreement with torchdiffeq must be 100 %
    "mlp": {"vs_loop": 200.0, "vs_torchode": 1.25},
    "mnist": {"vs_loop": 15.0, "vs_torchode": 1.0},
}


# ----------------------------------------------------------------------------- problems

class MLPField(nn.Module):
    """f(t, h) = scale * MLP([t, h]); a scalar t or a per-row t of shape [N, 1] both work."""

    def __init__(self, dim: int = 2, hidden: int = 64, scale: float = 6.0, gain: float = 2.0):
        super().__init__()
        self.scale = scale
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, dim))
        with torch.no_grad():  # a stiffer-than-default init so that dopri5 takes ~20-40 NFE
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    layer.weight.mul_(gain)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(h[:, :1]) * t
        return self.scale * self.net(torch.cat([tt, h], 1))


@dataclass
class Problem:
    name: str
    title: str
    func: Func
    h0: torch.Tensor
    t: torch.Tensor
    loop_samples: int


def mlp_problem(n: int, loop_samples: int, device: str, seed: int = 0) -> tuple[Problem, MLPField]:
    torch.manual_seed(seed)
    field = MLPField().to(device).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    h0 = torch.randn(n, 2, generator=gen).to(device)
    t = torch.tensor([0.0, 1.0], device=device)
    title = f"MLP ODE 2->64->64->2 tanh, {n} random h0"
    return Problem("mlp", title, field, h0, t, min(loop_samples, n)), field


@torch.no_grad()
def mnist_problem(n: int, loop_samples: int, device: str) -> Problem:
    model = build_mnist_model()
    model.load_state_dict(load_file(str(MNIST_DIR / "weights.safetensors")))
    model = model.to(device).eval()
    x = load_file(str(MNIST_DIR / "test.safetensors"))["x"][:n].to(device)
    h0 = model[:8](x)
    t = torch.tensor([0.0, 1.0], device=device)
    title = f"MNIST ODE-Net block, {len(h0)} test images, h0 {list(h0.shape[1:])}"
    return Problem("mnist", title, model[8].odefunc, h0, t, min(loop_samples, len(h0)))


# ----------------------------------------------------------------------------- timing

def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> tuple[object, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- solvers

def chunks(n: int, batch_size: int) -> list[slice]:
    size = batch_size if batch_size > 0 else n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def solve_dise(func: Func, h0: torch.Tensor, t: torch.Tensor, tol: float,
               batch_size: int = 0) -> dict:
    solver = Dopri5(rtol=tol, atol=tol)
    nfe, status = [], []
    for part in chunks(len(h0), batch_size):
        sol = solver.solve(VectorField.detect(func, h0[part], t), h0[part], t)
        nfe.append(sol.nfe)
        status.append(sol.status)
    return {"nfe": torch.cat(nfe).cpu(), "failed": int((torch.cat(status) != 0).sum())}


class CountingFunc:
    """Wraps f and counts its calls."""

    def __init__(self, func: Func):
        self.func = func
        self.calls = 0

    def __call__(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.func(t, h)


def solve_loop(func: Func, h0: torch.Tensor, t: torch.Tensor, tol: float) -> dict:
    """torchdiffeq one sample at a time; NFE counted per sample."""
    nfe = []
    for i in range(len(h0)):
        counted = CountingFunc(func)
        odeint(counted, h0[i:i + 1], t, rtol=tol, atol=tol, method="dopri5")
        nfe.append(counted.calls)
    return {"nfe": torch.tensor(nfe, dtype=torch.int64)}


def flat_field(func: Func, state_shape: torch.Size) -> Func:
    """torchode's f(t [B], y [B, F]) from f(t, h [B, *state]) that broadcasts a per-row t."""
    ones = [1] * len(state_shape)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = y.view(len(y), *state_shape)
        return func(t.to(y.dtype).view(-1, *ones), h).reshape(len(y), -1)
    return f


def solve_torchode(func: Func, h0: torch.Tensor, t: torch.Tensor, tol: float,
                   batch_size: int = 0) -> dict:
    term = torchode.ODETerm(flat_field(func, h0.shape[1:]))
    step = torchode.Dopri5(term=term)
    controller = torchode.IntegralController(atol=tol, rtol=tol, term=term)
    solver = torchode.AutoDiffAdjoint(step, controller)
    nfe, evals_per_row, status = [], [], []
    for part in chunks(len(h0), batch_size):
        y0 = h0[part].flatten(1)
        t_eval = t.to(h0.dtype).repeat(len(y0), 1)
        sol = solver.solve(torchode.InitialValueProblem(y0=y0, t_eval=t_eval))
        nfe.append(2 + 6 * sol.stats["n_steps"].cpu())
        evals_per_row.append(sol.stats["n_f_evals"].cpu())
        status.append(sol.status.cpu())
    return {"nfe": torch.cat(nfe), "evals_per_row": torch.cat(evals_per_row),
            "failed": int((torch.cat(status) != 0).sum())}


# ----------------------------------------------------------------------------- measurements

def nfe_stats(nfe: torch.Tensor) -> dict:
    x = nfe.double()
    return {"mean": x.mean().item(), "p50": x.quantile(0.5).item(), "p95": x.quantile(0.95).item(),
            "max": x.max().item()}


def batch_roundoff(func: Func, h0: torch.Tensor, t: torch.Tensor, k: int) -> float:
    """Largest difference between f on the whole batch and f row by row, over the first k rows."""
    batched = func(t[0], h0)[:k]
    rows = torch.cat([func(t[0], h0[i:i + 1]) for i in range(k)])
    return float((batched - rows).abs().max())


def agreement(func: Func, h0: torch.Tensor, t: torch.Tensor, tol: float, dise_nfe: torch.Tensor,
              ref_nfe: torch.Tensor) -> dict:
    """Share of the first ``len(ref_nfe)`` samples whose dise NFE (solved in the batch ``h0``)
    equals torchdiffeq's.

    The first disagreements are solved again by dise alone (a batch of one), and f's round-off
    between a batched and a row-by-row call is recorded: together they tell a step-control bug
    from float round-off that depends on the batch.
    """
    k = len(ref_nfe)
    equal = dise_nfe[:k] == ref_nfe
    mismatches = []
    for i in torch.nonzero(~equal).flatten()[:MAX_MISMATCHES_SHOWN].tolist():
        alone = int(solve_dise(func, h0[i:i + 1], t, tol)["nfe"][0])
        mismatches.append({"sample": i, "dise": int(dise_nfe[i]), "dise_alone": alone,
                           "torchdiffeq": int(ref_nfe[i])})
    return {"equal": int(equal.sum()), "total": k, "share": float(equal.double().mean()),
            "mismatches": mismatches, "f_batch_vs_rows_max_abs_diff": batch_roundoff(func, h0, t, k)}


def rowwise_agreement(func: Func, h0: torch.Tensor, t: torch.Tensor, tol: float, ref_nfe: torch.Tensor) -> dict:
    """dise's own arithmetic, with f's round-off taken out: the batch solved with f evaluated row by
    row (so every row sees exactly what it would alone), NFE compared with torchdiffeq's."""
    def rowwise(tt: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        times = tt.reshape(-1).expand(len(h))
        return torch.cat([func(times[i], h[i:i + 1]) for i in range(len(h))])

    field = VectorField(rowwise, TimeMode.BROADCAST)
    nfe = Dopri5(rtol=tol, atol=tol).solve(field, h0[:len(ref_nfe)], t).nfe.cpu()
    equal = nfe == ref_nfe
    return {"equal": int(equal.sum()), "total": len(equal)}


def ulp_stability(func: Func, h0: torch.Tensor, t: torch.Tensor, tol: float,
                  ref_nfe: torch.Tensor) -> dict:
    """The float round-off noise floor of the NFE check: torchdiffeq alone again, each h0 nudged
    by one ulp. Samples whose NFE changes are ones no batched solver can be expected to match."""
    nudged = torch.nextafter(h0, torch.full_like(h0, float("inf")))
    equal = solve_loop(func, nudged, t, tol)["nfe"] == ref_nfe
    return {"equal": int(equal.sum()), "total": len(equal)}


def batch_size_for(p: Problem, args: argparse.Namespace) -> int:
    """--batch-size, else the whole set, but 256 MNIST images at a time on a CPU (a conv batch of
    1000 spills the CPU caches: 256 is faster per sample for both batched solvers)."""
    if args.batch_size is not None:
        return args.batch_size
    return 256 if p.name == "mnist" and args.device == "cpu" else 0


def measure_batched(p: Problem, args: argparse.Namespace) -> tuple[dict, dict | None]:
    """dise and torchode timed alternately (one warm-up each, then ``--repeats`` rounds of
    dise, torchode), so that both see the same machine load; medians of the rounds."""
    n, size = len(p.h0), batch_size_for(p, args)
    run_dise = lambda: solve_dise(p.func, p.h0, p.t, TOL, size)  # noqa: E731
    run_tode = (lambda: solve_torchode(p.func, p.h0, p.t, TOL, size)) if torchode is not None else None  # noqa: E731
    out_d, _ = timed(run_dise, args.device)
    out_t = timed(run_tode, args.device)[0] if run_tode else None
    times_d, times_t = [], []
    for _ in range(args.repeats):
        times_d.append(timed(run_dise, args.device)[1])
        if run_tode:
            times_t.append(timed(run_tode, args.device)[1])
    sec_d = statistics.median(times_d)
    dise = {"seconds_total": sec_d, "seconds_per_sample": sec_d / n, "samples_timed": n,
            "failed": out_d["failed"], "nfe": out_d["nfe"], "nfe_stats": nfe_stats(out_d["nfe"])}
    if not run_tode:
        return dise, None
    sec_t = statistics.median(times_t)
    tode = {"seconds_total": sec_t, "seconds_per_sample": sec_t / n, "samples_timed": n,
            "failed": out_t["failed"], "nfe_stats": nfe_stats(out_t["nfe"]),
            "evals_per_row_stats": nfe_stats(out_t["evals_per_row"])}
    return dise, tode


def measure_loop(p: Problem, args: argparse.Namespace) -> dict:
    k = p.loop_samples
    solve_loop(p.func, p.h0[:1], p.t, TOL)   # warm-up
    out, seconds = timed(lambda: solve_loop(p.func, p.h0[:k], p.t, TOL), args.device)
    per_sample = seconds / k
    return {"seconds_timed": seconds, "samples_timed": k, "seconds_per_sample": per_sample,
            "seconds_total_extrapolated": per_sample * len(p.h0), "nfe": out["nfe"],
            "nfe_stats": nfe_stats(out["nfe"])}


def float64_agreement(field: MLPField, h0: torch.Tensor, t: torch.Tensor, n: int, tol: float) -> dict:
    """dise vs the torchdiffeq loop on a float64 copy of the MLP, every sample of a subset."""
    func = copy.deepcopy(field).double()
    h0, t = h0[:n].double(), t.double()
    dise_nfe, loop_nfe = solve_dise(func, h0, t, tol)["nfe"], solve_loop(func, h0, t, tol)["nfe"]
    result = agreement(func, h0, t, tol, dise_nfe, loop_nfe)
    return {"tol": tol, **result}


def strip_tensors(d: dict) -> dict:
    return {k: v for k, v in d.items() if not isinstance(v, torch.Tensor)}


@torch.no_grad()
def run_problem(p: Problem, args: argparse.Namespace, mlp: MLPField | None = None) -> dict:
    dise, tode = measure_batched(p, args)
    loop = measure_loop(p, args)
    result = {
        "problem": p.name, "title": p.title, "samples": len(p.h0), "dtype": str(p.h0.dtype),
        "tol": TOL, "device": args.device,
        "agreement_float32": agreement(p.func, p.h0, p.t, TOL, dise["nfe"], loop["nfe"]),
        "torchdiffeq_1ulp_stability": ulp_stability(p.func, p.h0[:p.loop_samples], p.t, TOL,
                                                    loop["nfe"]),
        "agreement_rowwise_f": rowwise_agreement(p.func, p.h0, p.t, TOL, loop["nfe"]),
        "dise": strip_tensors(dise), "torchdiffeq_loop": strip_tensors(loop),
        "torchode": tode,
        "speedup_vs_loop": loop["seconds_per_sample"] / dise["seconds_per_sample"],
        "speedup_vs_torchode": tode["seconds_per_sample"] / dise["seconds_per_sample"] if tode else None,
        "targets": TARGETS[p.name],
    }
    if mlp is not None and args.f64_samples > 0:
        n64 = min(args.f64_samples, len(p.h0))
        result["agreement_float64"] = float64_agreement(mlp, p.h0, p.t, n64, args.f64_tol)
    return result


# ----------------------------------------------------------------------------- every adaptive method

ADAPTIVE = [name for name, cls in METHODS.items() if cls.adaptive]
TORCHODE_STEPS = {"dopri5": "Dopri5", "tsit5": "Tsit5", "adaptive_heun": "Heun"}


def solve_dise_method(method: str, func: Func, h0: torch.Tensor, t: torch.Tensor, tol: float,
                      batch_size: int = 0) -> dict:
    solver: EmbeddedRK = METHODS[method](rtol=tol, atol=tol)
    nfe, steps = [], []
    for part in chunks(len(h0), batch_size):
        sol = solver.solve(VectorField.detect(func, h0[part], t), h0[part], t)
        nfe.append(sol.nfe)
        steps.append((sol.nfe - 2) // solver.tableau.evaluations)        # attempted steps
    return {"nfe": torch.cat(nfe).cpu(), "steps": torch.cat(steps).cpu()}


def solve_loop_method(method: str, func: Func, h0: torch.Tensor, t: torch.Tensor, tol: float) -> dict | None:
    """The defining library, one sample at a time: torchdiffeq, or torchdyn for tsit5 (None without it)."""
    if method == "tsit5":
        try:
            from torchdyn.numerics import odeint as torchdyn_odeint
        except ImportError:
            return None
        solve = lambda f, y: torchdyn_odeint(lambda tt, yy, args=None: f(tt, yy), y, t, "tsit5",  # noqa: E731
                                             atol=tol, rtol=tol)
    else:
        solve = lambda f, y: odeint(f, y, t, rtol=tol, atol=tol, method=method)  # noqa: E731
    nfe = []
    for i in range(len(h0)):
        counted = CountingFunc(func)
        solve(counted, h0[i:i + 1])
        nfe.append(counted.calls)
    return {"nfe": torch.tensor(nfe, dtype=torch.int64)}


def solve_torchode_method(method: str, func: Func, h0: torch.Tensor, t: torch.Tensor, tol: float,
                          batch_size: int = 0) -> dict:
    term = torchode.ODETerm(flat_field(func, h0.shape[1:]))
    step = getattr(torchode, TORCHODE_STEPS[method])(term=term)
    solver = torchode.AutoDiffAdjoint(step, torchode.IntegralController(atol=tol, rtol=tol, term=term))
    steps = []
    for part in chunks(len(h0), batch_size):
        y0 = h0[part].flatten(1)
        sol = solver.solve(torchode.InitialValueProblem(y0=y0, t_eval=t.to(h0.dtype).repeat(len(y0), 1)))
        steps.append(sol.stats["n_steps"].cpu())
    return {"steps": torch.cat(steps)}


@torch.no_grad()
def run_methods(p: Problem, args: argparse.Namespace) -> list[dict]:
    """Each adaptive method: dise, the per-sample loop and torchode, side by side on ``p``."""
    n, size, k = len(p.h0), batch_size_for(p, args), p.loop_samples
    rows = []
    for method in args.methods:
        run_dise = lambda m=method: solve_dise_method(m, p.func, p.h0, p.t, TOL, size)  # noqa: E731
        has_tode = torchode is not None and method in TORCHODE_STEPS
        run_tode = (lambda m=method: solve_torchode_method(m, p.func, p.h0, p.t, TOL, size)) if has_tode else None
        out_d, _ = timed(run_dise, args.device)
        if run_tode:
            timed(run_tode, args.device)
        times_d, times_t = [], []
        for _ in range(args.repeats):
            times_d.append(timed(run_dise, args.device)[1])
            if run_tode:
                times_t.append(timed(run_tode, args.device)[1])
        sec_d = statistics.median(times_d)
        loop, sec_loop = timed(lambda m=method: solve_loop_method(m, p.func, p.h0[:k], p.t, TOL), args.device)
        steps = float(out_d["steps"].double().sum())
        row = {"method": method, "dise_seconds_per_sample": sec_d / n, "nfe_mean": float(out_d["nfe"].double().mean()),
               "dise_seconds_per_nfe": sec_d / float(out_d["nfe"].double().sum()),
               "dise_seconds_per_step": sec_d / max(steps, 1.0), "loop": None, "torchode": None}
        if loop is not None:
            row["loop"] = {"library": "torchdyn" if method == "tsit5" else "torchdiffeq",
                           "seconds_per_sample": sec_loop / k,
                           "nfe_equal": int((loop["nfe"] == out_d["nfe"][:k]).sum()), "samples": k,
                           "speedup": (sec_loop / k) / (sec_d / n)}
        if run_tode:
            sec_t = statistics.median(times_t)
            row["torchode"] = {"seconds_per_sample": sec_t / n, "speedup": sec_t / sec_d}
        rows.append(row)
    return rows


def methods_report(p: Problem, rows: list[dict]) -> str:
    lines = [f"== every adaptive method: {p.name} ({p.h0.dtype}, rtol=atol={TOL:g}) ==",
             f"  {'method':<14}{'dise/sample':>12}{'NFE':>7}{'per NFE':>11}{'per step':>11}   "
             f"{'loop (library, speedup, NFE equal)':<40}{'torchode (speedup)'}"]
    for r in rows:
        loop = r["loop"]
        loop_text = "not installed" if loop is None else (
            f"{loop['library']}: {r['loop']['speedup']:.0f}x, {loop['nfe_equal']}/{loop['samples']}")
        tode = "-" if r["torchode"] is None else f"{r['torchode']['speedup']:.2f}x"
        lines.append(f"  {r['method']:<14}{fmt_time(r['dise_seconds_per_sample']):>12}{r['nfe_mean']:>7.1f}"
                     f"{fmt_time(r['dise_seconds_per_nfe']):>11}{fmt_time(r['dise_seconds_per_step']):>11}   "
                     f"{loop_text:<40}{tode}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report

def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:8.2f} {unit}"
    return f"{seconds / 1e-9:8.2f} ns"


def fmt_stats(s: dict) -> str:
    return f"{s['mean']:7.1f} {s['p50']:6.0f} {s['p95']:6.0f} {s['max']:6.0f}"


def verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


def fmt_agreement(a: dict, label: str) -> list[str]:
    ok = verdict(a["equal"] == a["total"])
    lines = [f"  NFE agreement dise == torchdiffeq, {label}: {a['equal']}/{a['total']} "
             f"({100 * a['share']:.1f} %; target 100 %) {ok}"]
    if a["mismatches"]:
        lines.append(f"    f on the whole batch vs row by row differs by up to "
                     f"{a['f_batch_vs_rows_max_abs_diff']:.2g}; first mismatches "
                     f"(alone = dise on a batch of one):")
    lines += [f"    sample {m['sample']}: dise {m['dise']} (alone {m['dise_alone']}) "
              f"vs torchdiffeq {m['torchdiffeq']}" for m in a["mismatches"]]
    return lines


def solver_row(name: str, seconds_per_sample: float, stats: dict, note: str) -> str:
    return f"  {name:<18}{fmt_time(seconds_per_sample):>12}   {fmt_stats(stats)}   {note}"


def speedup_line(label: str, speedup: float, target: float) -> str:
    return (f"  speedup dise vs {label:<17}{speedup:8.2f}x (target >= {target:g}x) "
            f"{verdict(speedup >= target)}")


def report(r: dict) -> str:
    dise, loop, tode, targets = r["dise"], r["torchdiffeq_loop"], r["torchode"], r["targets"]
    extrapolated = fmt_time(loop["seconds_total_extrapolated"]).strip()
    lines = [
        f"== {r['problem']}: {r['title']} ({r['dtype']}, rtol=atol={r['tol']:g}, {r['device']}) ==",
        f"  {'solver':<18}{'time/sample':>12}   {'NFE mean':>7} {'p50':>6} {'p95':>6} {'max':>6}   note",
        solver_row("dise", dise["seconds_per_sample"], dise["nfe_stats"],
                   f"batched, {dise['samples_timed']} samples, {dise['failed']} failed"),
        solver_row("torchdiffeq loop", loop["seconds_per_sample"], loop["nfe_stats"],
                   f"timed on {loop['samples_timed']} samples, extrapolated to {r['samples']}: "
                   f"{extrapolated}"),
    ]
    if tode is None:
        lines.append(f"  {'torchode':<18}  not installed (pip install torchode): column skipped")
    else:
        lines.append(solver_row("torchode", tode["seconds_per_sample"], tode["nfe_stats"],
                                f"batched, {tode['failed']} failed; every row evaluated "
                                f"{tode['evals_per_row_stats']['max']:.0f} times"))
    lines.append(speedup_line("torchdiffeq loop:", r["speedup_vs_loop"], targets["vs_loop"]))
    if r["speedup_vs_torchode"] is not None:
        lines.append(speedup_line("torchode:", r["speedup_vs_torchode"], targets["vs_torchode"]))
    lines += fmt_agreement(r["agreement_float32"], f"float32 at {r['tol']:g}")
    ulp = r["torchdiffeq_1ulp_stability"]
    lines.append(f"    noise floor: torchdiffeq alone, each h0 nudged by 1 ulp, keeps its NFE on "
                 f"{ulp['equal']}/{ulp['total']} samples")
    row = r["agreement_rowwise_f"]
    lines.append(f"    with f evaluated row by row (no batch round-off in f), dise's batched NFE equals "
                 f"torchdiffeq's on {row['equal']}/{row['total']} samples")
    if "agreement_float64" in r:
        lines += fmt_agreement(r["agreement_float64"], f"float64 at {r['agreement_float64']['tol']:g}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlp-samples", type=int, default=4096)
    parser.add_argument("--mnist-samples", type=int, default=1000)
    parser.add_argument("--loop-samples", type=int, default=None,
                        help="shorthand for both --loop-samples-mlp and --loop-samples-mnist")
    parser.add_argument("--loop-samples-mlp", type=int, default=None, help="default 512")
    parser.add_argument("--loop-samples-mnist", type=int, default=None, help="default 200")
    parser.add_argument("--f64-samples", type=int, default=256,
                        help="MLP samples for the float64 NFE check (0 skips it)")
    parser.add_argument("--f64-tol", type=float, default=1e-6)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="chunk size of the batched solvers; 0 = the whole set at once "
                             "[default: whole set for the MLP, 256 for MNIST]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads; 0 leaves torch's default (on a CPU shared with "
                             "other jobs, more threads than free cores can slow torch 10-100x)")
    parser.add_argument("--problems", default="mlp,mnist",
                        help="comma-separated subset of " + ",".join(TARGETS))
    parser.add_argument("--json", default=None, help="write all numbers to this JSON file")
    parser.add_argument("--methods", default="",
                        help="also time these adaptive methods side by side (comma-separated, or 'all')")
    args = parser.parse_args(argv)
    args.methods = ADAPTIVE if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in ADAPTIVE]
    if bad:
        parser.error(f"unknown methods {bad}; choose from {','.join(ADAPTIVE)}")
    args.problems = [name.strip() for name in args.problems.split(",") if name.strip()]
    unknown = set(args.problems) - set(TARGETS)
    if unknown:
        parser.error(f"unknown problems {sorted(unknown)}; choose from {','.join(TARGETS)}")
    for name, default in (("loop_samples_mlp", 512), ("loop_samples_mnist", 200)):
        if getattr(args, name) is None:
            setattr(args, name, args.loop_samples if args.loop_samples is not None else default)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"repeats {args.repeats} (median after 1 warm-up)")
    if torchode is None:
        print("torchode is not installed: its column is skipped (pip install torchode to include it)")
    results = []
    problems = []
    if "mlp" in args.problems:
        problem, mlp = mlp_problem(args.mlp_samples, args.loop_samples_mlp, args.device)
        problems.append(problem)
        results.append(run_problem(problem, args, mlp))
        print(report(results[-1]), flush=True)
    if "mnist" in args.problems:
        problem = mnist_problem(args.mnist_samples, args.loop_samples_mnist, args.device)
        problems.append(problem)
        results.append(run_problem(problem, args))
        print(report(results[-1]), flush=True)
    for problem in problems if args.methods else []:
        rows = run_methods(problem, args)
        results.append({"problem": problem.name, "methods": rows})
        print(methods_report(problem, rows), flush=True)
    if args.json:
        summary = {"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
