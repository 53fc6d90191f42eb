"""Damped nonlinear pendulum: initial states -> states at t = 2, for regression.

theta'' = -sin(theta) - 0.1 theta', state [theta, omega]. Initial states are uniform in
[-2, 2] x [-2, 2] (fixed seed); targets come from torchdiffeq's dopri5 at rtol = atol = 1e-9 in
float64, cast to float32. Run from the repository root; the outputs are committed:
    python -m sample_models.pendulum.data
Writes train.safetensors (2000 samples) and test.safetensors (500) beside this file:
x float32 [N, 2], y float32 [N, 2].
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torchdiffeq import odeint

HERE = Path(__file__).resolve().parent
SEED = 0
DAMPING = 0.1
T_END = 2.0
N_TRAIN = 2000
N_TEST = 500


def pendulum(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    theta, omega = state[:, 0], state[:, 1]
    return torch.stack([omega, -torch.sin(theta) - DAMPING * omega], 1)


def make_split(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 4.0 - 2.0
    t = torch.tensor([0.0, T_END], dtype=torch.float64)
    xt = odeint(pendulum, x0, t, rtol=1e-9, atol=1e-9, method="dopri5")[1]
    return x0.float().contiguous(), xt.float().contiguous()


def main() -> None:
    gen = torch.Generator().manual_seed(SEED)
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, y = make_split(n, gen)
        save_file({"x": x, "y": y}, str(HERE / f"{name}.safetensors"),
                  metadata={"source": "damped pendulum", "damping": str(DAMPING), "t_end": str(T_END),
                            "split": name, "seed": str(SEED)})
        print(f"{name}: {n} samples")


if __name__ == "__main__":
    main()
