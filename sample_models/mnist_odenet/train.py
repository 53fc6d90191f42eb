"""Train the sample ODE-Net on the 4000-image split, with DOPRI5 at rtol = atol = 1e-3.

Reproducible (fixed seed; on CUDA up to cuDNN's non-determinism). Runs on a CPU too (about an
hour on 2 cores) or in a minute or two on a GPU:
    python -m sample_models.mnist_odenet.train --epochs 40 --device cuda
Writes weights.safetensors (a state dict; rebuild with ``model:build``) beside this file.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sample_models.mnist_odenet.model import build

HERE = Path(__file__).resolve().parent


def random_shift(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels (zero fill): the only augmentation."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :].expand(n, h, w)
    out = padded[torch.arange(n)[:, None, None], 0, rows, cols]
    return out[:, None]


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 500):
        logits = model(x[i:i + 500].to(device))
        correct += (logits.argmax(1).cpu() == y[i:i + 500]).sum().item()
    model.train()
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(HERE / "weights.safetensors"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train = load_file(str(HERE / "train.safetensors"))
    test = load_file(str(HERE / "test.safetensors"))
    model = build().to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = (len(train["x"]) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    odefunc = model[8].odefunc
    for epoch in range(args.epochs):
        start = time.time()
        perm = torch.randperm(len(train["x"]), generator=gen)
        nfe, total_loss = 0, 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            x = random_shift(train["x"][idx].float(), gen).to(args.device)
            y = train["y"][idx].to(args.device)
            odefunc.nfe = 0
            loss = F.cross_entropy(model(x), y)
            nfe += odefunc.nfe
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        msg = (f"epoch {epoch + 1:3d}  loss {total_loss / len(perm):.4f}  "
               f"NFE/batch {nfe / steps_per_epoch:.1f}  {time.time() - start:.1f}s")
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            msg += f"  test acc {accuracy(model, test['x'], test['y'], args.device):.4f}"
        print(msg, flush=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, args.out, metadata={"arch": "sample_models.mnist_odenet.model:build", "seed": str(args.seed),
                                         "epochs": str(args.epochs)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
