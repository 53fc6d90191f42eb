"""Train the two-circles CNF by maximum likelihood, as torchdiffeq's ``examples/cnf.py`` does.

Reproducible on a CPU (fixed seed, one thread): a few minutes on 2 cores.
    python -m sample_models.circles_cnf.train > sample_models/circles_cnf/train.log
The example's recipe and defaults: every iteration draws a fresh batch of 512 two-circles points
(``data.make_circles``, noise 0.06, factor 0.5), solves (x, 0) from t1 = 10 to t0 = 0 with
``odeint`` (dopri5, rtol = atol = 1e-5; backpropagation through the solver, the example without
``--adjoint``), and minimises -mean log p(x) with Adam (lr 1e-3) for 1000 iterations; width 64,
hidden_dim 32. The batches come from one generator seeded with ``--seed``; the files of data.py
use other seeds. Writes weights.safetensors (a state dict; rebuild with ``model:build_density`` or
``model:build_sampler``) beside this file, then reports the test NLL with the model's own solve
and with a float64 reference solve, and the sampler's NFE on the test noise.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sample_models.circles_cnf.data import FACTOR, make_circles
from sample_models.circles_cnf.model import build_density, build_sampler

HERE = Path(__file__).resolve().parent


class RunningAverageMeter:
    """The example's running average of the loss (momentum 0.99)."""

    def __init__(self, momentum: float = 0.99):
        self.momentum = momentum
        self.val: float | None = None
        self.avg = 0.0

    def update(self, val: float) -> None:
        self.avg = val if self.val is None else self.avg * self.momentum + val * (1 - self.momentum)
        self.val = val


@torch.no_grad()
def test_nll(model: torch.nn.Module, x: torch.Tensor, rtol: float, atol: float,
             dtype: torch.dtype = torch.float32) -> tuple[float, int]:
    """(mean -log p(x) in nats, NFE) of one batched solve of x at the given tolerances and dtype."""
    rtol0, atol0 = model.rtol, model.atol
    model.rtol, model.atol = rtol, atol
    model.to(dtype)
    model.cnf.nfe = 0
    nll = -model(x.to(dtype)).mean().item()
    nfe = model.cnf.nfe
    model.rtol, model.atol = rtol0, atol0
    model.float()
    return nll, nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--niters", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--hidden-dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", default=str(HERE / "weights.safetensors"))
    args = parser.parse_args()

    torch.set_num_threads(1)  # bit-for-bit reproducible CPU results, and faster than 2 threads here
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = build_density(hidden_dim=args.hidden_dim, width=args.width)
    func = model.cnf
    optimizer = torch.optim.Adam(func.parameters(), lr=args.lr)
    print(f"CNF (hypernetwork {args.hidden_dim}, width {args.width}), {sum(p.numel() for p in func.parameters())} "
          f"parameters; two circles (noise 0.06, factor {FACTOR}) -> N(0, 0.1 I) over t = [10, 0], dopri5 "
          f"rtol {model.rtol} atol {model.atol}; {args.niters} iterations of a fresh batch of {args.num_samples}, "
          f"Adam lr {args.lr}, seed {args.seed}", flush=True)
    meter = RunningAverageMeter()
    start = time.time()
    nfe_sum = 0
    for itr in range(1, args.niters + 1):
        x = make_circles(args.num_samples, gen)
        func.nfe = 0
        loss = -model(x).mean(0)
        nfe_sum += func.nfe
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        meter.update(loss.item())
        if itr % args.log_every == 0:
            print(f"iter {itr:5d}  running avg loss {meter.avg:.4f}  loss {loss.item():.4f}  "
                  f"forward NFE {nfe_sum / args.log_every:.1f}  {time.time() - start:.1f}s", flush=True)
            nfe_sum = 0
    seconds = time.time() - start

    model.eval()
    test = load_file(str(HERE / "test.safetensors"))["x"]
    nll, nfe = test_nll(model, test, model.rtol, model.atol)
    nll_ref, nfe_ref = test_nll(model, test, 1e-7, 1e-7, torch.float64)
    bpd = 1 / (2 * math.log(2))                         # nats per sample -> bits per dimension (2 dims)
    print(f"trained in {seconds:.0f}s")
    print(f"test NLL ({len(test)} held-out points), the model's own solve (dopri5, rtol {model.rtol}, atol "
          f"{model.atol}, float32, one batch): {nll:.4f} nats = {nll * bpd:.4f} bits/dim, {nfe} NFE")
    print(f"test NLL, float64 reference solve (dopri5, rtol = atol = 1e-7): {nll_ref:.4f} nats = "
          f"{nll_ref * bpd:.4f} bits/dim, {nfe_ref} NFE")

    sampler = build_sampler(model.state_dict(), hidden_dim=args.hidden_dim, width=args.width).eval()
    noise = load_file(str(HERE / "noise.safetensors"))["x"]
    sampler.cnf.nfe = 0
    with torch.no_grad():
        samples = sampler(noise)
    radius = samples.norm(dim=1)
    outer = radius > (1 + FACTOR) / 2
    print(f"sampler on the {len(noise)} test noise draws, one batch: {sampler.cnf.nfe} NFE; {outer.float().mean():.1%} "
          f"land outside radius 0.75 (the data: 50%), mean radius {radius[outer].mean():.3f} outside and "
          f"{radius[~outer].mean():.3f} inside (the circles: 1 and {FACTOR})")

    state = {k: t.detach().cpu().contiguous() for k, t in model.state_dict().items()}
    save_file(state, args.out, metadata={
        "arch": "sample_models.circles_cnf.model:build_density (or :build_sampler)", "seed": str(args.seed),
        "niters": str(args.niters), "batch": str(args.num_samples), "lr": str(args.lr),
        "objective": "maximum likelihood, dopri5 rtol=atol=1e-5, t from 10 to 0"})
    print(f"wrote {Path(args.out).name}")


if __name__ == "__main__":
    main()
