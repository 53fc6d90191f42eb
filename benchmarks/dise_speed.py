"""Routed DISE bundle vs DOPRI5-only on the MNIST sample, measured side by side in one run.

    python benchmarks/dise_speed.py                 # CPU: batch 256
    python benchmarks/dise_speed.py --device cuda   # CUDA: batch 256 and 4096, and `dise run` throughput

Builds the bundle with the demo's pipeline (profile the training split, train the selector, export)
unless --bundle is given, then on the 1000 test images (repeated to fill a batch of 4096):
- wall clock per batch of the routed model and of DOPRI5-only (the same model, every sample solved
  by dise's DOPRI5), alternating rounds, medians; their ratio;
- mean NFE of each (DISE's includes the selector) and their ratio; test accuracy of each;
- on CUDA, offline throughput: `dise run`'s grouping (each integrator on all its samples in full
  batches) against DOPRI5-only over the same 4096 samples in batches of 4096.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from safetensors.torch import load_file  # noqa: E402

from dise_cli.bundle import load_bundle  # noqa: E402
from dise_cli.clock import alternating_medians  # noqa: E402
from dise_cli.datasets import Dataset  # noqa: E402
from dise_cli.demo import SAMPLE, run_demo  # noqa: E402
from dise_cli.offline import run_offline  # noqa: E402
from dise_cli.selector_training import selector_cost_in_nfe  # noqa: E402

TARGETS = {"cpu_256": 3.0, "cuda_run_4096": 2.5}


@torch.no_grad()
def measure(bundle: Path, device: torch.device, batch_sizes: list[int], repeats: int) -> dict:
    routed = load_bundle(bundle, device=device)
    ode = routed.ode
    dopri = routed.integrators[routed.baseline]
    test = load_file(str(SAMPLE / "test.safetensors"))
    x_all, y_all = test["x"].to(device), test["y"].to(device)

    def baseline(x):
        return ode.forward_with(x, lambda p: dopri.solve(p.field, p.h0, p.t).ys)

    out_d, stats = routed(x_all, return_stats=True)
    out_b = baseline(x_all)
    acc_d = float((out_d.argmax(1) == y_all).double().mean())
    acc_b = float((out_b.argmax(1) == y_all).double().mean())
    problem = ode.encode(x_all)
    nfe_d = float(stats.nfe.double().mean()) + selector_cost_in_nfe(routed.selector.net, ode, ode.encode(x_all[:256]))
    nfe_b = float(dopri.solve(problem.field, problem.h0, problem.t).nfe.double().mean())
    result = {"device": str(device), "accuracy_dise": acc_d, "accuracy_dopri5": acc_b,
              "accuracy_delta_pp": 100 * (acc_d - acc_b), "nfe_dise": nfe_d, "nfe_dopri5": nfe_b,
              "nfe_ratio": nfe_d / nfe_b, "batches": []}
    for size in batch_sizes:
        x = x_all[torch.arange(size, device=device) % len(x_all)]
        med = alternating_medians({"dise": lambda: routed(x), "dopri5": lambda: baseline(x)}, repeats, device)
        result["batches"].append({"batch_size": size, "seconds_dise": med["dise"], "seconds_dopri5": med["dopri5"],
                                  "speedup": med["dopri5"] / med["dise"]})
    if device.type == "cuda":
        n = 4096
        idx = torch.arange(n) % len(test["x"])
        data = Dataset(x=test["x"][idx], y=None, t=None, name="test x4", sha256="")
        x = data.x.to(device)
        med = alternating_medians({"run": lambda: run_offline(routed, data, batch_size=n, device=device),
                            "dopri5": lambda: baseline(x)}, repeats, device)
        result["run_4096"] = {"seconds_run": med["run"], "seconds_dopri5": med["dopri5"],
                              "throughput_ratio": med["dopri5"] / med["run"]}
    return result


def report(r: dict) -> str:
    lines = [f"== DISE bundle vs DOPRI5-only, MNIST sample test split ({r['device']}) ==",
             f"  accuracy: DISE {100 * r['accuracy_dise']:.2f}%  DOPRI5 {100 * r['accuracy_dopri5']:.2f}%  "
             f"delta {r['accuracy_delta_pp']:+.2f} pp (target >= -0.3)",
             f"  mean NFE: DISE {r['nfe_dise']:.2f} (selector included)  DOPRI5 {r['nfe_dopri5']:.2f}  "
             f"ratio {r['nfe_ratio']:.3f} (target <= 0.15)"]
    for b in r["batches"]:
        target = TARGETS.get(f"{r['device'].split(':')[0]}_{b['batch_size']}")
        lines.append(f"  batch {b['batch_size']:5d}: DISE {1e3 * b['seconds_dise']:8.2f} ms  DOPRI5 "
                     f"{1e3 * b['seconds_dopri5']:8.2f} ms  speedup {b['speedup']:.2f}x"
                     + (f" (target >= {target:g}x)" if target else ""))
    if "run_4096" in r:
        run = r["run_4096"]
        lines.append(f"  dise run, 4096 samples: {1e3 * run['seconds_run']:.2f} ms vs DOPRI5 "
                     f"{1e3 * run['seconds_dopri5']:.2f} ms: throughput x{run['throughput_ratio']:.2f} "
                     f"(target >= {TARGETS['cuda_run_4096']:g}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="an existing bundle [default: build one with the demo pipeline]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = [256, 4096] if device.type == "cuda" else [256]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else None
        if bundle is None:
            run_demo(Path(tmp), device, note=lambda m: print(m, file=sys.stderr))
            bundle = Path(tmp) / "mnist_odenet.dise"
        result = measure(bundle, device, sizes, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
