"""How a hand-written sampling loop's state and f relate to the ODE dise solves.

EDM's ``edm_sampler`` and k-diffusion's ``sample_heun`` / ``sample_euler`` call a denoiser D(x, σ),
not a velocity: they step dx/dσ = (x - D(x, σ)) / σ. They start from the noise times σ_max (EDM in
float64), and their last step, to σ = 0 where that velocity is undefined, is Euler (one call of D at
the last σ). dise reads such a loop as: the state started (``start``), the ODE solved from σ_max to the
last σ the loop calls D at, then that one Euler step (``finish``). Every integrator dise compares runs
between the same two, so none calls D at σ = 0. A loop that calls f at a multiple of the time it steps
on (a scheduler's ``sigma * 1000``) is solved in its own time (``TimeScaled``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


class TimeScaled(nn.Module):
    """f as a hand-written loop calls it: at ``scale`` times the time its steps move on (a scheduler that
    steps sigmas from 1 to 0 and calls the network at ``sigma * 1000``). Its time argument (first for
    ``order`` "t,x", else second) is scaled before ``func`` sees it; dise solves in the loop's own time."""

    def __init__(self, func: nn.Module, scale: float, order: str):
        super().__init__()
        self.func, self.scale, self.time_index = func, float(scale), 0 if order == "t,x" else 1

    def forward(self, a, b):
        args = [a, b]
        args[self.time_index] = args[self.time_index] * self.scale
        return self.func(*args)


class Denoised(nn.Module):
    """The velocity of a denoiser's probability-flow ODE, (x - D(x, σ)) / σ, with D's arguments in the
    order D takes them (``order`` "t,x": time first)."""

    def __init__(self, denoiser: nn.Module, order: str):
        super().__init__()
        self.func, self.time_index = denoiser, 0 if order == "t,x" else 1

    def forward(self, a, b):
        sigma, x = (a, b) if self.time_index == 0 else (b, a)
        denoised = self.func(a, b).to(x.dtype)
        if isinstance(sigma, torch.Tensor) and sigma.ndim and x.ndim > 1 and sigma.numel() == x.shape[0]:
            sigma = sigma.reshape(-1, *[1] * (x.ndim - 1))         # a σ per row, [N] or [N, 1]
        return (x - denoised) / sigma


@dataclass(frozen=True)
class LoopForm:
    """What a loop does around the ODE dise solves: ``denoiser``: its f is D(x, σ) (``Denoised``);
    ``start_scale`` / ``start_dtype``: it starts from its input times this, in this dtype (EDM's
    ``latents.to(torch.float64) * t_steps[0]``); ``end_at``: after the solve, one Euler step from the
    solve's end to this time (EDM's and k-diffusion's last step, to σ = 0)."""

    denoiser: bool = False
    start_scale: float | None = None
    start_dtype: str | None = None
    end_at: float | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> "LoopForm | None":
        return None if not data else cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def wrap(self, func: nn.Module, order: str) -> nn.Module:
        return Denoised(func, order) if self.denoiser else func

    def start(self, h0: torch.Tensor) -> torch.Tensor:
        if self.start_dtype is not None:
            h0 = h0.to(getattr(torch, self.start_dtype))
        return h0 if self.start_scale is None else h0 * self.start_scale

    def finish(self, field: Any, t_end: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The loop's last step: Euler from the solve's end ``t_end`` to ``end_at`` (one call of f)."""
        if self.end_at is None:
            return h
        t = t_end.to(h.device, h.dtype)
        return h + (self.end_at - t) * field(t, h)

    def finish_trajectory(self, field: Any, t_end: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """``ys`` ``[T, N, ...]`` with its last state stepped on by ``finish``."""
        if self.end_at is None:
            return ys
        return torch.cat([ys[:-1], self.finish(field, t_end, ys[-1]).unsqueeze(0)])

    def describe(self) -> str:
        """What a person reads: f's role, the start, the last step."""
        parts = []
        if self.denoiser:
            parts.append("f is a denoiser D(x, σ), and dise solves dx/dσ = (x - D(x, σ)) / σ")
        if self.start_scale is not None or self.start_dtype is not None:
            scale = "" if self.start_scale is None else f" times {self.start_scale:g}"
            dtype = "" if self.start_dtype is None else f" in {self.start_dtype}"
            parts.append(f"the loop starts from its input{scale}{dtype}")
        if self.end_at is not None:
            parts.append(f"its last step, to {self.end_at:g}, is one Euler step (one more call of f) after the "
                         f"solve, for every integrator")
        return "; ".join(parts)


def loop_func(func: nn.Module, order: str, time_scale: float | None, form: "LoopForm | None") -> nn.Module:
    """f as dise solves a loop's ODE with it: at the loop's time scale (``TimeScaled``), as the velocity of
    a denoiser where the loop's is one (``Denoised``)."""
    if time_scale is not None:
        func = TimeScaled(func, time_scale, order)
    return func if form is None else form.wrap(func, order)
