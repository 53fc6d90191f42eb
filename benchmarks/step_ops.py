"""Operations and host syncs per adaptive step: what a GPU would launch and wait for, counted on CPU.

    python benchmarks/step_ops.py                   # every adaptive method, float32, 256 samples
    python benchmarks/step_ops.py --methods dopri5 --samples 1024

Every aten operation dise's solver dispatches is counted with a TorchDispatchMode (the operations a
GPU would launch as kernels), leaving out those inside f (the model's own, the same for any solver),
and divided by the number of loop iterations (attempted steps of the batch). Host syncs are the
operations whose result the host must read before it can go on: ``aten::_local_scalar_dense``
(``bool()``, ``.item()``, ``.tolist()``), ``aten::nonzero`` and boolean-mask indexing (the size of the
result depends on the data). The field is a small MLP with a time input, on random states that
differ in stiffness so that samples finish at different steps (compaction has work to do).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from dise_cli.integrators import TimeMode, VectorField  # noqa: E402
from dise_cli.integrators.adaptive import ADAPTIVE  # noqa: E402

# operations that only make a new view of memory or allocate it: no kernel on a GPU
VIEWS = {"aten::view", "aten::select", "aten::slice", "aten::expand", "aten::unsqueeze", "aten::squeeze",
         "aten::as_strided", "aten::t", "aten::transpose", "aten::permute", "aten::alias", "aten::detach",
         "aten::_reshape_alias", "aten::unbind", "aten::split", "aten::split_with_sizes", "aten::lift_fresh",
         # allocations: the caching allocator, no kernel
         "aten::empty", "aten::empty_like", "aten::empty_strided"}
SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::nonzero_static"}


class Counting(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.inside_f = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside_f:
            name = f"aten::{func._schema.name.split('::')[-1]}"
            if name == "aten::index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                             for i in (args[1] if len(args) > 1 else []) if i is not None):
                name = "aten::index (bool mask)"
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


class Field(torch.nn.Module):
    def __init__(self, dim: int, counting: Counting):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = torch.nn.Linear(dim + 1, 64), torch.nn.Linear(64, dim)
        self.scale = torch.nn.Parameter(torch.ones(dim))
        self.counting = counting

    def forward(self, t, h):
        self.counting.inside_f += 1
        try:
            tt = (t.reshape(-1, 1) if t.ndim else t.reshape(1, 1)).expand(len(h), 1).to(h.dtype)
            return self.l2(torch.tanh(self.l1(torch.cat([h, tt], 1)))) * self.scale - 3 * h * h[:, :1].abs()
        finally:
            self.counting.inside_f -= 1


def count(method, samples: int, dim: int) -> dict:
    counting = Counting()
    field = VectorField(Field(dim, counting), TimeMode.VECTOR)
    h0 = torch.randn(samples, dim, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3.0, samples)[:, None]
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        method.solve(field, h0, t)                     # warm-up (rounding plans are read once per length)
        with counting:
            sol = method.solve(field, h0, t)
    iterations = int(sol.nfe.max() - (2 if method.first_step is None else 1)) // method.tableau.evaluations
    ops = counting.ops
    syncs = sum(v for k, v in ops.items() if k in SYNC_OPS or k.endswith("(bool mask)"))
    launches = sum(v for k, v in ops.items() if k not in VIEWS)
    return {"method": method.spec, "iterations": iterations, "ops": sum(ops.values()), "syncs": syncs,
            "launches_per_step": launches / max(iterations, 1),
            "ops_per_step": sum(ops.values()) / max(iterations, 1), "syncs_per_step": syncs / max(iterations, 1),
            "top": ops.most_common(8), "nfe_mean": float(sol.nfe.double().mean())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="all", help="comma-separated adaptive methods, or all")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--verbose", action="store_true", help="the most frequent operations of each method")
    parser.add_argument("--compact-every", type=int, default=1, help="steps between compactions of the active set")
    args = parser.parse_args(argv)
    names = [m.name for m in ADAPTIVE] if args.methods == "all" else args.methods.split(",")
    classes = {m.name: m for m in ADAPTIVE}
    print(f"{args.samples} samples, float32, rtol = atol = 1e-3, t in [0, 1], compaction every {args.compact_every} "
          f"steps; operations outside f per loop iteration")
    print(f"{'method':<14}{'iterations':>11}{'NFE mean':>10}{'ops/step':>10}{'of them kernels':>17}"
          f"{'syncs/step':>12}")
    for name in names:
        method = classes[name](rtol=1e-3, atol=1e-3)
        method.compact_every = args.compact_every
        r = count(method, args.samples, args.dim)
        print(f"{name:<14}{r['iterations']:>11}{r['nfe_mean']:>10.2f}{r['ops_per_step']:>10.1f}"
              f"{r['launches_per_step']:>17.1f}{r['syncs_per_step']:>12.2f}")
        if args.verbose:
            print("    " + ", ".join(f"{k} {v}" for k, v in r["top"]))


if __name__ == "__main__":
    main()
