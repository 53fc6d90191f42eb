"""A tiny Neural ODE classifier for the two-moons data, written the way a torchdiffeq user writes it.

The model is an ``nn.Sequential``: a linear encoder (2 -> 8), an ``ODEBlock`` that holds ``odefunc``
and ``integration_time`` and calls ``odeint`` in its forward, and a linear decoder (8 -> 2 logits).
The ODE function is a time-dependent MLP (8 + t -> 32 -> 8, tanh). Nothing here knows about dise.
"""
from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint


class ConcatLinear(nn.Module):
    """A linear layer of the state with the time t appended as an extra input feature."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self._layer = nn.Linear(dim_in + 1, dim_out)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(x[:, :1]) * t
        return self._layer(torch.cat([tt, x], 1))


class ODEfunc(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 32):
        super().__init__()
        self.fc1 = ConcatLinear(dim, hidden)
        self.fc2 = ConcatLinear(hidden, dim)
        self.nfe = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = torch.tanh(self.fc1(t, x))
        return self.fc2(t, out)


class ODEBlock(nn.Module):
    def __init__(self, odefunc: nn.Module, rtol: float = 1e-3, atol: float = 1e-3):
        super().__init__()
        self.odefunc = odefunc
        self.register_buffer("integration_time", torch.tensor([0.0, 1.0]), persistent=False)
        self.rtol = rtol
        self.atol = atol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.integration_time.type_as(x)
        out = odeint(self.odefunc, x, t, rtol=self.rtol, atol=self.atol, method="dopri5")
        return out[1]


def build(dim: int = 8, hidden: int = 32) -> nn.Sequential:
    """encoder -> ODEBlock(ODEfunc) -> decoder. ``--arch`` points here."""
    return nn.Sequential(nn.Linear(2, dim), ODEBlock(ODEfunc(dim, hidden)), nn.Linear(dim, 2))
