"""Step-size control, apart from the methods: how the first step is chosen, where stages are
evaluated at the end of a step, how output times are met, and how the next step size follows from
the error ratio. Two controllers, those of the libraries people train with:

- ``torchdiffeq`` (0.2.5's ``RKAdaptiveStepsizeODESolver``): steps run freely past output times,
  which are read off a 4th-order dense output; stages at the step's end are evaluated just before it
  (``Perturb.PREV``); the first step is Hairer, Norsett & Wanner's with exponent 1/order.
- ``torchdyn`` (1.0.6's ``_adaptive_odeint`` without an interpolator): a step is cut short to land
  on the next output time, and after a cut the next step starts from what was left of the cut one;
  stages are evaluated at t0 + c dt; the first step's exponent is 1/(order + 1).

Both accept a step when the RMS of error / (atol + rtol max(|y0|, |y1|)) is at most 1 and scale the
step by min(10, max(0.9 ratio^(-1/order), 0.2)) (no shrinking after an accepted step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dise_cli.integrators.rounding import exact_pow, per_row

SAFETY = 0.9
IFACTOR = 10.0
DFACTOR = 0.2


@dataclass(frozen=True)
class StepControl:
    name: str
    lands_on_outputs: bool        # torchdyn: cut steps to meet output times; torchdiffeq: dense output
    perturb_end: bool             # stages at the step's end just before it (torchdiffeq's Perturb.PREV)
    first_step_extra_order: int   # the first step's exponent is 1 / (order + this)

    @torch.no_grad()
    def initial_step(self, field, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, rtol: torch.Tensor,
                     atol: torch.Tensor, order: int) -> torch.Tensor:
        """Hairer, Norsett & Wanner II.4's first step, per row, as torchdiffeq's ``_select_initial_step``
        computes it (``t0`` per row, float64) -> ``[N]`` float64. Costs one evaluation of f."""
        dtype = y0.dtype
        scale = atol + torch.abs(y0) * rtol
        d0, d1 = field.rms(y0 / scale), field.rms(f0 / scale)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.tensor(1e-6, dtype=dtype, device=y0.device),
                         0.01 * d0 / d1).abs()
        # h0 is float64 where a tolerance per element made the scale float64; torchdiffeq's 0-dim h0 then
        # multiplies f0 in f0's dtype
        y1 = y0 + per_row(h0.to(dtype), y0.ndim) * f0
        f1 = field.at_times((t0 + h0.double()).to(dtype), y1)
        d2 = torch.abs(field.rms((f1 - f0) / scale) / h0)
        h1 = torch.where((d1 <= 1e-15) & (d2 <= 1e-15),
                         torch.clamp(h0 * 1e-3, min=1e-6),
                         exact_pow(0.01 / torch.maximum(d1, d2), 1.0 / float(order + self.first_step_extra_order)))
        return torch.minimum(100 * h0, h1.abs()).double()

    @torch.no_grad()
    def next_step(self, dt: torch.Tensor, ratio: torch.Tensor, order: int, safety: torch.Tensor) -> torch.Tensor:
        """The next step size per row from the error ratio (torchdiffeq's ``_optimal_step_size``)."""
        r64 = ratio.detach().double()
        # float64 from the start: torch.where of two Python floats is float32, and 0.2 in float32 is not 0.2
        dfactor = torch.where(r64 < 1, torch.ones_like(r64), torch.full_like(r64, DFACTOR))
        # safety and the exponent are tensors, as in torchdiffeq: a Python float over a tensor would be
        # computed as float * reciprocal(tensor), and a float exponent 0.5 as a square root.
        exponent = torch.tensor(order, dtype=torch.float64, device=dt.device).reciprocal()
        factor = torch.clamp(torch.maximum(safety / exact_pow(r64, exponent), dfactor), max=IFACTOR)
        factor = torch.where(r64 == 0, IFACTOR, factor)
        return (dt * factor).clamp(min=0.0)


TORCHDIFFEQ = StepControl("torchdiffeq", lands_on_outputs=False, perturb_end=True, first_step_extra_order=0)
TORCHDYN = StepControl("torchdyn", lands_on_outputs=True, perturb_end=False, first_step_extra_order=1)
CONTROLS = {c.name: c for c in (TORCHDIFFEQ, TORCHDYN)}
