"""The two-circles target and the data files of the CNF sample, generated here (seeded, no sklearn).

``make_circles`` is sklearn's ``make_circles(n, noise=0.06, factor=0.5)``, the call of torchdiffeq's
``examples/cnf.py``, rewritten on a torch.Generator: n // 2 points at evenly spaced angles on the
unit circle, the rest on the circle of radius 0.5, shuffled, then Gaussian noise of std 0.06 on
both coordinates. ``sample_prior`` draws the flow's base distribution, the example's N(0, 0.1 I).
Run from the repository root; the outputs are committed:
    python -m sample_models.circles_cnf.data
Writes beside this file, each with one key ``x`` (float32, [N, 2]; no labels):
    test.safetensors         512 circle points, seed 1: held out (dise.yaml's data, the density model)
    train.safetensors       1024 circle points, seed 2: for profiling and training the selector
    noise.safetensors        512 draws of N(0, 0.1 I), seed 3: the sampler's test inputs (sampler.yaml)
    noise_train.safetensors 1024 draws of N(0, 0.1 I), seed 4: the sampler's profiling / selector data
Training (train.py) draws a fresh batch of circle points every iteration from its own generator (seed 0).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from sample_models.circles_cnf.model import PRIOR_VAR

HERE = Path(__file__).resolve().parent
NOISE = 0.06                         # the example's make_circles(noise=0.06, factor=0.5)
FACTOR = 0.5
FILES = (("test", 512, 1), ("train", 1024, 2), ("noise", 512, 3), ("noise_train", 1024, 4))   # name, N, seed


def make_circles(n: int, gen: torch.Generator, noise: float = NOISE, factor: float = FACTOR) -> torch.Tensor:
    """``n`` points ``[n, 2]`` float32 on two concentric circles (radius 1 and ``factor``), as sklearn's
    make_circles: evenly spaced angles, n // 2 on the outer circle, shuffled, plus N(0, noise^2)."""
    n_out = n // 2
    n_in = n - n_out
    angles_out = torch.arange(n_out, dtype=torch.float64) * (2 * math.pi / n_out)
    angles_in = torch.arange(n_in, dtype=torch.float64) * (2 * math.pi / n_in)
    x = torch.cat([torch.stack([angles_out.cos(), angles_out.sin()], 1),
                   factor * torch.stack([angles_in.cos(), angles_in.sin()], 1)])
    x = x[torch.randperm(n, generator=gen)]
    x = x + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return x.float()


def sample_prior(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` draws ``[n, 2]`` float32 of the base distribution p_z0 = N(0, 0.1 I)."""
    return torch.randn(n, 2, generator=gen) * math.sqrt(PRIOR_VAR)


def main() -> None:
    for name, n, seed in FILES:
        gen = torch.Generator().manual_seed(seed)
        if name.startswith("noise"):
            x, what = sample_prior(n, gen), f"N(0, {PRIOR_VAR} I), the CNF's base distribution"
        else:
            x, what = make_circles(n, gen), f"two circles (radius 1 and {FACTOR}), noise {NOISE}"
        save_file({"x": x.contiguous()}, str(HERE / f"{name}.safetensors"),
                  metadata={"source": what, "seed": str(seed), "n": str(n)})
        print(f"{name}.safetensors: x {tuple(x.shape)}, {what}, seed {seed}")


if __name__ == "__main__":
    main()
