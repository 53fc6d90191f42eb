"""Train the sample Latent ODE on irregular JapaneseVowels, with DOPRI5 at rtol = 1e-3, atol = 1e-4.

Reproducible on a CPU (fixed seed, one thread): about a minute and a half on 2 cores.
    python -m sample_models.vowels_latent_ode.train > sample_models/vowels_latent_ode/train.log
A stratified 45 of the 270 training utterances (5 per speaker, seed 0) are held out for model
selection: the weights of the epoch with the best validation accuracy (ties: lower validation
loss) are kept. Adam (lr 3e-3, weight decay 1e-4), cosine decay over 200 epochs, batch 32,
gradients clipped at norm 1. The loss is cross-entropy plus 0.01 x KL(q(z0 | x) || N(0, I)), with
z0 sampled from q during training as in Rubanova et al.'s VAE (the model's forward uses the
mean). Augmentation: each batch hides up to 20 % more of the observed frames and adds noise of
std 0.1 (in standardised units) to the observed values. Writes weights.safetensors (a state
dict; rebuild with ``model:build``) beside this file.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sample_models.vowels_latent_ode.model import build

HERE = Path(__file__).resolve().parent
VAL_PER_CLASS = 5


def stratified_split(y: torch.Tensor, per_class: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, validation) with ``per_class`` validation samples of every class."""
    train_idx, val_idx = [], []
    for c in range(int(y.max()) + 1):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        val_idx.append(idx[:per_class])
        train_idx.append(idx[per_class:])
    return torch.cat(train_idx), torch.cat(val_idx)


def augment(x: torch.Tensor, extra_drop: float, noise: float, gen: torch.Generator) -> torch.Tensor:
    """Hide a further share of the observed frames (up to ``extra_drop``, drawn per utterance; never
    its last frame) and add Gaussian noise of std ``noise`` to the observed values."""
    c = (x.shape[-1] - 1) // 2
    seen = x[..., c] > 0
    hide = (torch.rand(seen.shape, generator=gen) < extra_drop * torch.rand(len(x), 1, generator=gen)) & seen
    hide[torch.arange(len(x)), seen.sum(1) - 1] = False
    keep = (~hide).float()[..., None]
    out = x.clone()
    out[..., :c] = (x[..., :c] + noise * torch.randn(x[..., :c].shape, generator=gen) * x[..., c:2 * c]) * keep
    out[..., c:2 * c] = x[..., c:2 * c] * keep
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """(loss, accuracy, DOPRI5 NFE per batch of up to 500) of the model's own forward on x, y."""
    model.eval()
    model.func.nfe = 0
    logits = torch.cat([model(x[i:i + 500]) for i in range(0, len(x), 500)])
    batches = (len(x) + 499) // 500
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item(), model.func.nfe / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--kl", type=float, default=0.01, help="KL weight; 0 trains on the mean of z0")
    parser.add_argument("--extra-drop", type=float, default=0.2)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "weights.safetensors"))
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train = load_file(str(HERE / "train.safetensors"))
    test = load_file(str(HERE / "test.safetensors"))
    train_idx, val_idx = stratified_split(train["y"], VAL_PER_CLASS, gen)
    x_tr, y_tr = train["x"][train_idx], train["y"][train_idx]
    x_val, y_val = train["x"][val_idx], train["y"][val_idx]
    model = build()
    print(f"{sum(p.numel() for p in model.parameters())} parameters; {len(y_tr)} training, {len(y_val)} "
          f"validation, {len(test['y'])} test utterances; seed {args.seed}; {vars(args) | {'out': Path(args.out).name}}",
          flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = (len(y_tr) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
    best, best_state, best_epoch, start_all = (-1.0, float("inf")), None, 0, time.time()
    for epoch in range(args.epochs):
        start = time.time()
        perm = torch.randperm(len(y_tr), generator=gen)
        nfe, total_loss, correct = 0, 0.0, 0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            model.func.nfe = 0
            mean, std = model.encoder(augment(x_tr[idx], args.extra_drop, args.noise, gen))
            z0 = mean + std * torch.randn(mean.shape, generator=gen) if args.kl > 0 else mean
            logits = model.classify(z0)
            kl = (0.5 * (mean ** 2 + std ** 2 - 1) - torch.log(std)).sum(1).mean()
            loss = F.cross_entropy(logits, y_tr[idx]) + args.kl * kl
            nfe += model.func.nfe
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y_tr[idx]).sum().item()
        val_loss, val_acc, _ = evaluate(model, x_val, y_val)
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best, best_epoch = (val_acc, val_loss), epoch + 1
            best_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        print(f"epoch {epoch + 1:3d}  loss {total_loss / len(perm):.4f}  train acc {correct / len(perm):.4f}  "
              f"val loss {val_loss:.4f}  val acc {val_acc:.4f}  NFE/batch {nfe / steps_per_epoch:.1f}  "
              f"{time.time() - start:.1f}s", flush=True)
    model.load_state_dict(best_state)
    _, train_acc, _ = evaluate(model, train["x"], train["y"])
    test_loss, test_acc, test_nfe = evaluate(model, test["x"], test["y"])
    print(f"kept epoch {best_epoch} (val acc {best[0]:.4f}, val loss {best[1]:.4f}); "
          f"accuracy on all 270 training utterances {train_acc:.4f}", flush=True)
    print(f"test acc {test_acc:.4f}  test loss {test_loss:.4f}  DOPRI5 NFE of the model's own forward on the "
          f"370 test utterances in one batch: {test_nfe:.0f}; trained in {time.time() - start_all:.0f}s", flush=True)
    save_file(best_state, args.out, metadata={"arch": "sample_models.vowels_latent_ode.model:build",
                                              "seed": str(args.seed), "epoch": str(best_epoch)})
    print(f"wrote {Path(args.out).name}")


if __name__ == "__main__":
    main()
