"""A Neural ODE regressor for the damped pendulum, written the way a torchdiffeq user writes it.

The model is an ``nn.Sequential`` holding a single ``ODEBlock`` (no encoder or decoder: the ODE
state is the pendulum state [theta, omega]). The block holds ``odefunc`` and ``integration_time``
(0 -> 2) and calls ``odeint`` in its forward; the ODE function is an autonomous MLP
(2 -> 64 -> 64 -> 2, tanh) that ignores t. Nothing here knows about dise.
"""
from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint


class ODEfunc(nn.Module):
    def __init__(self, dim: int = 2, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, dim),
        )
        self.nfe = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.net(x)


class ODEBlock(nn.Module):
    def __init__(self, odefunc: nn.Module, t_end: float = 2.0, rtol: float = 1e-3, atol: float = 1e-3):
        super().__init__()
        self.odefunc = odefunc
        self.register_buffer("integration_time", torch.tensor([0.0, t_end]), persistent=False)
        self.rtol = rtol
        self.atol = atol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.integration_time.type_as(x)
        out = odeint(self.odefunc, x, t, rtol=self.rtol, atol=self.atol, method="dopri5")
        return out[1]


def build(hidden: int = 64) -> nn.Sequential:
    """ODEBlock(ODEfunc) alone, in an nn.Sequential. ``--arch`` points here."""
    return nn.Sequential(ODEBlock(ODEfunc(2, hidden)))
