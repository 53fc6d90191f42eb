"""Train the moons flow-matching sampler with conditional flow matching (plain CFM, torchcfm's recipe).

Reproducible on a CPU (fixed seed, one thread): about a minute on 2 cores.
    python -m sample_models.moons_flow.train > sample_models/moons_flow/train.log
Plain (independent-coupling) CFM, torchcfm's ``ConditionalFlowMatcher(sigma=0.1)`` as in its 2-D
tutorials (Lipman et al., 2023; Tong et al., 2024): every step draws a batch of noise x0 ~ N(0, I)
and moons x1 independently, t ~ U(0, 1), x_t = t x1 + (1 - t) x0 + sigma eps and regresses
v(t, x_t) on the conditional velocity u_t = x1 - x0 (mean squared error). No minibatch OT
coupling. Adam (lr 1e-3, torchcfm's default), batch 256, cosine decay over the steps. Data are
drawn afresh every step from one generator seeded with ``--seed``; the files of data.py use other
seeds. Writes weights.safetensors (a state dict; rebuild with ``model:build``) beside this file,
then samples the test noise with the model's own solver and reports its NFE and the energy
distance to the held-out moons.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sample_models.moons_flow.data import sample_moons, sample_noise
from sample_models.moons_flow.distribution import energy_distance
from sample_models.moons_flow.model import build

HERE = Path(__file__).resolve().parent


def cfm_loss(v: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, sigma: float,
             gen: torch.Generator) -> torch.Tensor:
    """The CFM loss of one batch: E |v(t, x_t) - (x1 - x0)|^2 with x_t on the straight path plus noise."""
    t = torch.rand(len(x0), 1, generator=gen)
    xt = t * x1 + (1 - t) * x0 + sigma * torch.randn(x0.shape, generator=gen)
    return ((v(t, xt) - (x1 - x0)) ** 2).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=1000)
    parser.add_argument("--out", default=str(HERE / "weights.safetensors"))
    args = parser.parse_args()

    torch.set_num_threads(1)  # bit-for-bit reproducible CPU results
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = build()
    v = model.v
    opt = torch.optim.Adam(v.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    print(f"plain CFM (sigma {args.sigma}), N(0, I) -> moons, {sum(p.numel() for p in v.parameters())} parameters, "
          f"{args.steps} steps of batch {args.batch_size}, Adam lr {args.lr} with cosine decay, seed {args.seed}",
          flush=True)
    start = time.time()
    running = 0.0
    for step in range(1, args.steps + 1):
        x0 = sample_noise(args.batch_size, gen)
        x1 = sample_moons(args.batch_size, gen)
        loss = cfm_loss(v, x0, x1, args.sigma, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if step % args.log_every == 0:
            print(f"step {step:6d}  loss {running / args.log_every:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                  f"{time.time() - start:.1f}s", flush=True)
            running = 0.0
    seconds = time.time() - start

    model.eval()
    noise = load_file(str(HERE / "noise.safetensors"))["x"]
    heldout = load_file(str(HERE / "moons_heldout.safetensors"))["x"]
    v.nfe = 0
    with torch.no_grad():
        samples = model(noise)
    print(f"trained in {seconds:.0f}s; the model's own solve (dopri5, rtol {model.rtol}, atol {model.atol}) of the "
          f"{len(noise)} test noise draws in one batch: {v.nfe} NFE; energy distance to the {len(heldout)} held-out "
          f"moons {energy_distance(samples, heldout):.4f}")
    state = {k: t.detach().cpu().contiguous() for k, t in model.state_dict().items()}
    # One metadata entry: safetensors writes several in no fixed order, and the file should be byte-identical.
    about = {"arch": "sample_models.moons_flow.model:build", "seed": args.seed, "steps": args.steps,
             "objective": f"plain CFM, sigma {args.sigma}"}
    save_file(state, args.out, metadata={"about": json.dumps(about, sort_keys=True)})
    print(f"wrote {Path(args.out).name}")


if __name__ == "__main__":
    main()
