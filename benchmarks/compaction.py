"""How often should the adaptive solver compact its active set? DOPRI5 on the MNIST sample's f with
compaction every 1, 2, 4 and 8 steps, side by side in one run (results are identical; time is not).

    python benchmarks/compaction.py                    # CPU
    python benchmarks/compaction.py --device cuda      # where syncs, not FLOPs, bound a step

Compacting every step costs one host sync per step; a longer interval saves syncs and evaluates
finished rows (masked) until the next compaction. Reported: median seconds per solve of --batch
encoded test digits, and the speed-up over compacting every step.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from dise_cli.clock import alternating_medians  # noqa: E402
from dise_cli.integrators import Dopri5  # noqa: E402
from paper_tables import opened  # noqa: E402

SAMPLE = REPO_ROOT / "sample_models" / "mnist_odenet"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--every", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    model = opened(SAMPLE, SAMPLE / "weights.safetensors", "test", args.device)
    with torch.no_grad():
        problem = model.model.encode(model.data.x[:args.batch].to(model.device))
    solvers = {}
    for k in [int(v) for v in args.every.split(",")]:
        solvers[k] = Dopri5(rtol=1e-3, atol=1e-3)
        solvers[k].compact_every = k
    with torch.no_grad():
        runs = {k: (lambda s=s: s.solve(problem.field, problem.h0, problem.t)) for k, s in solvers.items()}
        median = alternating_medians(runs, args.repeats, model.device)
        nfe = {k: s.solve(problem.field, problem.h0, problem.t).nfe for k, s in solvers.items()}
    first = next(iter(median))
    print(f"DOPRI5 1e-3 on {SAMPLE.name}'s f, batch {args.batch}, {model.device}; median of {args.repeats}")
    print(f"{'compact every':>14}{'ms/solve':>10}{'speed-up':>10}{'NFE equal':>11}")
    for k, s in median.items():
        print(f"{k:>14}{1e3 * s:>10.2f}{median[first] / s:>10.2f}{'yes' if torch.equal(nfe[k], nfe[first]) else 'NO':>11}")


if __name__ == "__main__":
    main()
