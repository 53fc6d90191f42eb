"""A flow-matching sampler for the two-moons data, written the way a torchcfm user writes one.

Conditional flow matching (Lipman et al., 2023; Tong et al., 2024) learns a velocity field
v(t, x) that carries N(0, I) at t = 0 to the data at t = 1. The field is torchcfm's
``MLP(dim=2, w=64, time_varying=True)``: [x, t] (3 inputs) -> 64 -> 64 -> 64 -> 2 with SELU.
Sampling solves dx/dt = v(t, x) from noise x0 over t = [0, 1]:

    x1 = odeint(v, x0, torch.tensor([0., 1.]), method="dopri5", rtol=1e-4, atol=1e-4)[-1]

DOPRI5 at rtol = atol = 1e-4 is this model's own solver: the tolerance torchcfm's 2-D tutorials
sample with (``NeuralODE(..., solver="dopri5", atol=1e-4, rtol=1e-4)``); users commonly pick 1e-4
or 1e-5. Nothing here knows about dise.
"""
from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint

DIM = 2


class VelocityMLP(nn.Module):
    """v(t, x): torchcfm's time-varying MLP, t joined to x as a last input feature.

    ``t`` may be a float, a 0-dim tensor (one time for the batch, as odeint passes it), ``[N]`` or
    ``[N, 1]`` (a time per row).
    """

    def __init__(self, dim: int = DIM, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, width), nn.SELU(),
            nn.Linear(width, width), nn.SELU(),
            nn.Linear(width, width), nn.SELU(),
            nn.Linear(width, dim),
        )
        self.nfe = 0

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1)
        return self.net(torch.cat([x, t.expand(x.shape[0], 1)], dim=1))


class FlowSampler(nn.Module):
    """forward(x0 [N, 2] noise) -> x1 [N, 2], a sample of the learned distribution."""

    def __init__(self, v: VelocityMLP, rtol: float = 1e-4, atol: float = 1e-4):
        super().__init__()
        self.v = v
        self.register_buffer("t", torch.tensor([0.0, 1.0]), persistent=False)
        self.rtol = rtol
        self.atol = atol

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        t = self.t.to(x0)
        return odeint(self.v, x0, t, method="dopri5", rtol=self.rtol, atol=self.atol)[-1]


def build(checkpoint=None, *, width: int = 64, rtol: float = 1e-4, atol: float = 1e-4) -> FlowSampler:
    """The sampler. ``--arch sample_models.moons_flow.model:build`` points here.

    Args:
        checkpoint: a state dict, or a dict holding one under ``state_dict``, to load; None builds
            the model untrained (dise loads weights.safetensors into it).
        width: the MLP's hidden width (64 for the sample; smaller makes a tiny version for tests).
        rtol, atol: the sampler's DOPRI5 tolerances.
    """
    model = FlowSampler(VelocityMLP(DIM, width), rtol=rtol, atol=atol)
    if checkpoint is not None:
        model.load_state_dict(checkpoint.get("state_dict", checkpoint))
    return model
