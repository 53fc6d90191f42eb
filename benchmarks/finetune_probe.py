"""One fine-tuning run on the MNIST sample, for the sweeps behind the README's Table 1 notes.

    python benchmarks/finetune_probe.py --reg err --lam 10 --lr 1e-3            # about 45 s on 2 CPU cores
    python benchmarks/finetune_probe.py --reg err --lam 30 --lr 1e-3 --scale-f 0.1 --schedule cosine
    python benchmarks/finetune_probe.py --scale-f 0.1 --epochs 0                 # no training
    python benchmarks/finetune_probe.py --from-scratch --epochs 40 --lr 3e-3 --schedule cosine --reg err --lam 10

Starts from the shipped weights, or with ``--from-scratch`` from the sample's architecture freshly
initialised with ``--seed`` (optionally with f's output scaled by ``--scale-f``, i.e. its last
GroupNorm's weight and bias), fine-tunes with Table 1's data split and DOPRI5 settings, and prints
the validation accuracy / NFE per epoch, then the test accuracy, DOPRI5's mean NFE and h(0)'s RMS of
the kept checkpoint and of the last epoch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from paper_table1 import BATCH, F_OUTPUT_KEYS, measure_on_test, opened, split_train  # noqa: E402

from dise_cli.finetuning import FinetuneSettings, finetune, state_rms  # noqa: E402
from sample_models.mnist_odenet.model import build  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reg", default="err")
    parser.add_argument("--lam", type=float, default=10.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--schedule", default="constant")
    parser.add_argument("--scale-f", type=float, default=1.0, help="multiply f's output by this first")
    parser.add_argument("--from-scratch", action="store_true", help="start from a fresh initialisation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    train, test = opened("train", args.device), opened("test", args.device)
    reference_rms = state_rms(test.model, test.data, device, 256)
    module = train.model.module
    if args.from_scratch:
        torch.manual_seed(args.seed)
        module.load_state_dict(build().state_dict())
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name in F_OUTPUT_KEYS:
                tensor.mul_(args.scale_f)
    train_part, val_part = split_train(train.data)
    began = time.perf_counter()
    settings = FinetuneSettings(reg=args.reg, lam=args.lam, epochs=args.epochs, lr=args.lr,
                                batch_size=BATCH, schedule=args.schedule, seed=args.seed)
    result = finetune(train.model, train_part, val_part, settings, device, "classification")
    last = {k: v.detach().clone() for k, v in module.state_dict().items()}
    print(f"{args.reg} λ {args.lam:g} lr {args.lr:g} {args.schedule} scale-f {args.scale_f:g}"
          f"{' from scratch' if args.from_scratch else ''}, "
          f"{time.perf_counter() - began:.0f} s; validation accuracy / NFE per epoch: "
          + " | ".join(f"{h['epoch']}: {100 * h['validation']['accuracy']:.1f}% / {h['validation']['nfe_mean']:.1f}"
                       for h in result.history))
    for label, state in ((f"kept (epoch {result.kept_epoch})", result.state), ("last epoch", last)):
        m = measure_on_test(test, state, device, reference_rms)
        print(f"  {label}: test {100 * m['accuracy']:.2f}%, NFE {m['nfe']:.2f}, h(0) RMS {m['state_rms']:.3g}, "
              f"NFE with atol x RMS {m['nfe_scale_matched']:.2f}")


if __name__ == "__main__":
    main()
