"""Two interleaved half circles ("two moons") with Gaussian noise, generated here (no sklearn).

Deterministic (fixed seed). Run from the repository root; the outputs are committed:
    python -m sample_models.moons.data
Writes train.safetensors (2000 samples) and test.safetensors (1000) beside this file:
x float32 [N, 2], y int64 [N] (class 0 = upper moon, 1 = lower moon).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
SEED = 0
NOISE = 0.15
N_TRAIN = 2000
N_TEST = 1000


def make_moons(n: int, noise: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points, half on each moon, with isotropic Gaussian noise of std ``noise``, shuffled."""
    n0 = n // 2
    n1 = n - n0
    a0 = torch.rand(n0, generator=gen, dtype=torch.float64) * math.pi
    a1 = torch.rand(n1, generator=gen, dtype=torch.float64) * math.pi
    upper = torch.stack([torch.cos(a0), torch.sin(a0)], 1)
    lower = torch.stack([1.0 - torch.cos(a1), 0.5 - torch.sin(a1)], 1)
    x = torch.cat([upper, lower]) + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    y = torch.cat([torch.zeros(n0, dtype=torch.int64), torch.ones(n1, dtype=torch.int64)])
    perm = torch.randperm(n, generator=gen)
    return x[perm].float().contiguous(), y[perm].contiguous()


def main() -> None:
    gen = torch.Generator().manual_seed(SEED)
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, y = make_moons(n, NOISE, gen)
        save_file({"x": x, "y": y}, str(HERE / f"{name}.safetensors"),
                  metadata={"source": "two moons", "noise": str(NOISE), "split": name, "seed": str(SEED)})
        print(f"{name}: {n} samples")


if __name__ == "__main__":
    main()
