"""Does `torch.compile` pay for dise's solves? Eager against compiled, compile time included, side by
side in one run, on the MNIST sample's f (256 encoded test digits).

    python benchmarks/compile_probe.py                 # CPU
    python benchmarks/compile_probe.py --device cuda

Three things are compiled, each timed against the same solve in eager mode:
  - f alone (`torch.compile(f)`, dynamic shapes: the adaptive solver's batch shrinks as samples finish),
    under euler:steps=1, rk4:steps=1 and dopri5 at 1e-3 (the sample's candidates);
  - a whole fixed-step solve (rk4:steps=1 over the grid, `torch.compile` of the solve function), a static
    graph of 4 f calls;
For each: the first call (compilation included), the median of --repeats later calls, and the number of
solves after which the compiled one has paid for its compilation (never, where it is not faster).
The sample's f counts its calls (`self.nfe += 1`, as torchdiffeq's examples do). By default dynamo
treats that integer as a constant and recompiles f on every call until its limit (8), after which f
runs eager behind failing guards. --unspec-ints (`allow_unspec_int_on_nn_module`) lets it vary.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from dise_cli.clock import seconds  # noqa: E402
from dise_cli.integrators import parse_candidates  # noqa: E402
from paper_tables import opened  # noqa: E402

SAMPLE = REPO_ROOT / "sample_models" / "mnist_odenet"


def compare(name: str, eager, compiled, device: torch.device, repeats: int) -> dict:
    first = seconds(compiled, device)
    seconds(eager, device)                                # eager's own warm-up
    e, c = [], []
    for _ in range(repeats):                            # alternating, so both see the same load
        e.append(seconds(eager, device))
        c.append(seconds(compiled, device))
    e_med, c_med = statistics.median(e), statistics.median(c)
    gain = e_med - c_med
    return {"name": name, "first": first, "eager": e_med, "compiled": c_med, "speedup": e_med / c_med,
            "break_even": (first - c_med) / gain if gain > 0 else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--unspec-ints", action="store_true",
                        help="let integer attributes of modules vary (f's call counter) instead of recompiling")
    args = parser.parse_args(argv)
    torch._dynamo.config.allow_unspec_int_on_nn_module = args.unspec_ints
    model = opened(SAMPLE, SAMPLE / "weights.safetensors", "test", args.device)
    device = model.device
    with torch.no_grad():
        problem = model.model.encode(model.data.x[:args.batch].to(device))
    field, h0, t = problem.field, problem.h0, problem.t
    compiled_field = field.with_func(torch.compile(field.func, dynamic=True))
    results = []
    with torch.no_grad():
        for spec in ("euler:steps=1", "rk4:steps=1", "dopri5:rtol=1e-3,atol=1e-3"):
            (integrator,) = parse_candidates(spec)
            results.append(compare(f"f compiled, {spec}", lambda i=integrator: i.solve(field, h0, t),
                                   lambda i=integrator: i.solve(compiled_field, h0, t), device, args.repeats))
            torch._dynamo.reset()
            compiled_field = field.with_func(torch.compile(field.func, dynamic=True))
        (rk4,) = parse_candidates("rk4:steps=1")
        whole = torch.compile(lambda h: rk4.solve(field, h, t).ys)
        results.append(compare("whole rk4:steps=1 solve compiled", lambda: rk4.solve(field, h0, t).ys,
                               lambda: whole(h0), device, args.repeats))
    print(f"torch.compile on {SAMPLE.name}'s f, batch {args.batch}, {device}, torch {torch.__version__}; "
          f"median of {args.repeats} solves; integer module attributes "
          f"{'vary' if args.unspec_ints else 'constant (the default)'}")
    print(f"{'what':<44}{'first (compile)':>16}{'eager':>10}{'compiled':>10}{'speed-up':>10}{'pays after':>14}")
    for r in results:
        pays = "never" if r["break_even"] is None else f"{r['break_even']:.0f} solves"
        print(f"{r['name']:<44}{r['first']:>15.2f}s{1e3 * r['eager']:>8.1f}ms{1e3 * r['compiled']:>8.1f}ms"
              f"{r['speedup']:>9.2f}x{pays:>14}")


if __name__ == "__main__":
    main()
