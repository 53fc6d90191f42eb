"""Train the pendulum Neural ODE on MSE with DOPRI5 at rtol = atol = 1e-3 (under a minute on a CPU).

Reproducible on a CPU (fixed seed, single thread). Run from the repository root:
    python -m sample_models.pendulum.train
Writes weights.safetensors (a state dict; rebuild with ``model:build``) beside this file and
prints the test MSE.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sample_models.pendulum.model import build

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """(MSE, NFE of the whole set as one batch)."""
    model.eval()
    odefunc = model[0].odefunc
    odefunc.nfe = 0
    mse = F.mse_loss(model(x), y).item()
    nfe = odefunc.nfe
    model.train()
    return mse, nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=2e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "weights.safetensors"))
    args = parser.parse_args()

    torch.set_num_threads(1)  # bit-for-bit reproducible CPU results
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train = load_file(str(HERE / "train.safetensors"))
    test = load_file(str(HERE / "test.safetensors"))
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = (len(train["x"]) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    odefunc = model[0].odefunc
    start = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(train["x"]), generator=gen)
        nfe, total_loss = 0, 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            odefunc.nfe = 0
            loss = F.mse_loss(model(train["x"][idx]), train["y"][idx])
            nfe += odefunc.nfe
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        msg = f"epoch {epoch + 1:3d}  loss {total_loss / len(perm):.2e}  NFE/batch {nfe / steps_per_epoch:.1f}"
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            msg += f"  test MSE {evaluate(model, test['x'], test['y'])[0]:.2e}"
        print(msg, flush=True)
    mse, nfe = evaluate(model, test["x"], test["y"])
    print(f"test MSE {mse:.3e}  (NFE {nfe} on the test set as one batch)  {time.time() - start:.1f}s")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, args.out, metadata={"arch": "sample_models.pendulum.model:build", "seed": str(args.seed),
                                         "epochs": str(args.epochs)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
