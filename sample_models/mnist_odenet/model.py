"""The ODE-Net of Chen et al. (2018) for MNIST, written the way torchdiffeq's example writes it.

The model is an ``nn.Sequential``: a downsampling conv stem (1x28x28 -> 64x6x6), an ``ODEBlock``
that holds ``odefunc`` and ``integration_time`` and calls ``odeint`` in its forward, and a head
(GroupNorm, ReLU, global average pooling, linear). dise finds the block by those attribute names;
nothing here knows about dise.
"""
from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint

# Per-pixel statistics of MNIST, applied inside the model so that the data can stay uint8.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def norm(dim: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, dim), dim)


class Normalize(nn.Module):
    """uint8 or float pixels in [0, 255] -> standardised float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - MNIST_MEAN) / MNIST_STD


class ConcatConv2d(nn.Module):
    """A 3x3 convolution of the state with the time t appended as a constant channel."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self._layer = nn.Conv2d(dim_in + 1, dim_out, kernel_size=3, stride=1, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(x[:, :1, :, :]) * t
        return self._layer(torch.cat([tt, x], 1))


class ODEfunc(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = norm(dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = ConcatConv2d(dim, dim)
        self.norm2 = norm(dim)
        self.conv2 = ConcatConv2d(dim, dim)
        self.norm3 = norm(dim)
        self.nfe = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = self.relu(self.norm1(x))
        out = self.conv1(t, out)
        out = self.relu(self.norm2(out))
        out = self.conv2(t, out)
        return self.norm3(out)


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


def build(dim: int = 64) -> nn.Sequential:
    """The ODE-Net: stem -> ODEBlock(ODEfunc) -> head. ``--arch`` points here."""
    stem = [
        Normalize(),
        nn.Conv2d(1, dim, 3, 1),
        norm(dim), nn.ReLU(inplace=True),
        nn.Conv2d(dim, dim, 4, 2, 1),
        norm(dim), nn.ReLU(inplace=True),
        nn.Conv2d(dim, dim, 4, 2, 1),
    ]
    head = [norm(dim), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(dim, 10)]
    return nn.Sequential(*stem, ODEBlock(ODEfunc(dim)), *head)
