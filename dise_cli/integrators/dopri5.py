"""Dormand-Prince 5(4) with step-size control per sample inside the batch.

Each sample has its own step size, accept/reject decisions, NFE and status. Samples that reach the
end of the grid (or fail) leave the active set: later steps run f on fewer rows, so easy samples
stop costing evaluations. Initial step selection, the RMS error norm, the step-size controller,
the mixed precision (times in float64, stages in the state's dtype) and the dense output copy
torchdiffeq 0.2.5's ``dopri5`` operation for operation, down to its rounding (the order in which
``sum`` adds stage products, scalar-path ``pow``, tensor-over-tensor division), so a sample solved
here gives bit for bit what it gives alone in torchdiffeq, whichever samples share its batch (as
far as f itself computes a row the same in any batch).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field as dc_field

import torch

from dise_cli.integrators.base import Integrator, Solution, Status, StepErrors
from dise_cli.integrators.tableaus import (DOPRI5_ALPHA, DOPRI5_BETA, DOPRI5_C_ERROR, DOPRI5_C_MID,
                                           DOPRI5_ORDER)
from dise_cli.integrators.vector_field import VectorField

# torchdiffeq's controller constants (rk_common.RKAdaptiveStepsizeODESolver defaults).
SAFETY = 0.9
IFACTOR = 10.0
DFACTOR = 0.2
DEFAULT_MAX_STEPS = 10_000


Plan = "int | tuple[Plan, ...]"   # a summation order: an index, or sub-plans added left to right


def _candidate_plans(n: int) -> list:
    head, tail, rest = 0, tuple(range(4, n)), tuple(range(1, min(n, 4)))
    return [
        (head, *tail, *rest),                          # float32 on x86 CPUs: x0 + x4 + x5 + x6 + x1 + x2 + x3
        ((head, tail) if tail else head, *rest),       # float64 on x86 CPUs: x0 + (x4 + x5 + x6) + x1 + ...
        tuple(range(n)),                               # left to right
    ]


@functools.lru_cache(maxsize=None)
def _sum_plan(n_terms: int, dtype: torch.dtype, device_type: str):
    """The order in which ``x.sum(-1)`` adds the ``n_terms`` (<= 7) entries of a row here, so that
    dise's sums of stage products round exactly as torchdiffeq's do.

    PyTorch's CPU kernel does not add short rows left to right, and its order differs between
    float32 and float64. It is an implementation detail, so it is measured once, on rows whose
    entries span 16 orders of magnitude (where orders give different sums), not assumed.
    """
    gen = torch.Generator().manual_seed(n_terms)
    x = torch.randn(4096, n_terms, generator=gen, dtype=torch.float64)
    x = (x * 10 ** (torch.rand(4096, n_terms, generator=gen, dtype=torch.float64) * 16 - 8))
    x = x.to(dtype=dtype, device=device_type)
    expected = x.sum(-1)
    plans = _candidate_plans(n_terms)
    for plan in plans:
        if torch.equal(_add(plan, lambda j, out: x[:, j].clone(), []), expected):
            return plan
    return plans[-1]


def _add(plan, term, scratch: list):
    """Sum ``term(j, out)`` over the indices of ``plan`` in its order. ``term`` writes the j-th
    product into ``out`` (a fresh tensor when ``out`` is None) and returns it, or returns None for
    a term known to be zero (skipped: adding +0 changes no bit but a zero's sign). After the first
    product, products go to one reused buffer (``scratch``), so a sum allocates twice, not S times.
    """
    if isinstance(plan, int):
        return term(plan, None)
    total = None
    for sub in plan:
        if isinstance(sub, int) and total is not None:
            if not scratch:
                scratch.append(torch.empty_like(total))
            value = term(sub, scratch[0])
        else:
            value = _add(sub, term, scratch)
        if value is None:
            continue
        if total is None:
            total = value
        else:
            total += value
    return total


def _combine(y: torch.Tensor | None, k: list[torch.Tensor], weights: tuple[float, ...],
             coef: torch.Tensor) -> torch.Tensor:
    """``y + sum_j k[j] * coef[j]`` per row, rounded exactly as torchdiffeq's
    ``y + sum(k * (beta * dt), dim=-1)``: each product rounded, the products added in the order
    ``sum(-1)`` uses (see ``_sum_plan``), then ``y`` added. Product by product into reused buffers,
    without an [S, N, *state] temporary; terms whose tableau weight is zero are skipped.
    ``k``: S tensors ``[N, *state]``; ``weights``: the tableau row; ``coef``: ``[S', N]``, S' >= S.
    """
    shape = (-1, *([1] * (k[0].ndim - 1)))
    plan = _sum_plan(len(k), k[0].dtype, k[0].device.type)

    reuse = not (torch.is_grad_enabled() and any(kj.requires_grad for kj in k))   # out= has no autograd

    def term(j: int, out: torch.Tensor | None) -> torch.Tensor | None:
        if weights[j] == 0.0:
            return None
        if out is not None and reuse:
            return torch.mul(k[j], coef[j].view(shape), out=out)
        return k[j] * coef[j].view(shape)

    total = _add(plan, term, [])
    if y is None:
        return total
    total += y          # y + total, in place on a buffer we own (IEEE addition commutes)
    return total


def _pow(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """``x ** exponent`` per element, computed the way torchdiffeq's 0-dim tensors are.

    On a CPU, PyTorch's vectorised pow differs in the last bit from its scalar pow for a few
    percent of inputs, and which path an element takes depends on its position in the tensor. A
    step size would then depend on a sample's batch-mates. A strided float64 view makes every
    element take the scalar path (std::pow in double, as for a 0-dim tensor); the result is then
    rounded to ``x``'s dtype, which is what a 0-dim float32 ``x ** 0.2`` computes too.
    """
    buf = torch.empty(len(x), 2, dtype=torch.float64, device=x.device)
    buf[:, 0] = x
    return buf[:, 0].pow(exponent).to(x.dtype)


def _rows(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[N]`` -> ``[N, 1, ..., 1]`` to broadcast a per-row scalar against a state of rank ``ndim``."""
    return v.view(-1, *([1] * (ndim - 1)))


@dataclass
class _Results:
    """Per-sample results, filled in as samples leave the active set."""

    nfe: torch.Tensor
    status: torch.Tensor
    n_steps: torch.Tensor
    out_time: list = dc_field(default_factory=list)     # chunks of grid indices
    out_sample: list = dc_field(default_factory=list)   # chunks of sample indices
    out_value: list = dc_field(default_factory=list)    # chunks of states
    step_sample: list = dc_field(default_factory=list)   # per accepted step, when errors are recorded
    step_error: list = dc_field(default_factory=list)
    step_dt: list = dc_field(default_factory=list)
    step_kinetic: list = dc_field(default_factory=list)

    def output(self, time_idx: torch.Tensor, sample_idx: torch.Tensor, value: torch.Tensor) -> None:
        self.out_time.append(time_idx)
        self.out_sample.append(sample_idx)
        self.out_value.append(value)


class Dopri5(Integrator):
    """Adaptive Dormand-Prince 5(4); NFE = 2 (initial step selection; 1 with ``first_step``) + 6 per
    attempted step."""

    name = "dopri5"
    adaptive = True

    def __init__(self, rtol: float = 1e-3, atol: float = 1e-3, max_steps: int = DEFAULT_MAX_STEPS,
                 first_step: float | None = None):
        if not rtol > 0 or not atol > 0:
            raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if first_step is not None and not first_step > 0:
            raise ValueError(f"first_step must be > 0, got {first_step}")
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.max_steps = int(max_steps)
        self.first_step = None if first_step is None else float(first_step)   # as torchdiffeq's option

    def loosened(self, factor: float = 10.0) -> "Dopri5":
        return Dopri5(rtol=self.rtol * factor, atol=self.atol * factor, max_steps=self.max_steps,
                      first_step=self.first_step)

    @property
    def spec(self) -> str:
        spec = f"dopri5:rtol={self.rtol:g},atol={self.atol:g}"
        if self.max_steps != DEFAULT_MAX_STEPS:
            spec += f",max_steps={self.max_steps}"
        if self.first_step is not None:
            spec += f",first_step={self.first_step:g}"
        return spec

    def _solve(self, field: VectorField, h0: torch.Tensor, t: torch.Tensor, record_errors: bool,
               f0: torch.Tensor | None) -> Solution:
        dtype, device, n, n_t, ndim = h0.dtype, h0.device, len(h0), len(t), h0.ndim
        # Stage weights (rows 0-5) and error weights (row 6) as one zero-padded table, so one
        # product with dt gives every coefficient of a step; the four stage times likewise.
        weights = (*DOPRI5_BETA, DOPRI5_C_ERROR)
        table = torch.tensor([list(w) + [0.0] * (7 - len(w)) for w in weights], dtype=dtype, device=device)
        inner_alpha = torch.tensor(DOPRI5_ALPHA[:4], dtype=dtype, device=device)
        c_mid = torch.tensor(DOPRI5_C_MID, dtype=dtype, device=device)
        rtol = torch.tensor(self.rtol, dtype=torch.float64, device=device)
        atol = torch.tensor(self.atol, dtype=torch.float64, device=device)
        safety = torch.tensor(SAFETY, dtype=torch.float64, device=device)

        res = _Results(nfe=torch.zeros(n, dtype=torch.int64, device=device),
                       status=torch.zeros(n, dtype=torch.uint8, device=device),
                       n_steps=torch.zeros(n, dtype=torch.int64, device=device))
        idx = torch.arange(n, device=device)
        res.output(torch.zeros(n, dtype=torch.long, device=device), idx, h0)

        f = field(t[0].to(dtype), h0) if f0 is None else f0
        rows = {  # per active row; compacted together when rows leave
            "idx": idx, "y": h0, "f": f,
            "t_now": t[0].expand(n).clone(),
            "dt": (self._initial_step(field, t[0], h0, f, rtol, atol) if self.first_step is None
                   else torch.full((n,), self.first_step, dtype=torch.float64, device=device)),
            "ptr": torch.ones(n, dtype=torch.long, device=device),   # next grid index to output
            "attempts": torch.zeros(n, dtype=torch.int64, device=device),
            "accepted": torch.zeros(n, dtype=torch.int64, device=device),
        }

        while len(rows["idx"]):
            t_now, dt = rows["t_now"], rows["dt"]
            t_next = t_now + dt
            cannot_step = ~(t_next > t_now) | (rows["attempts"] >= self.max_steps)   # also NaN dt
            if bool(cannot_step.any()):
                stop = torch.where(rows["attempts"] >= self.max_steps, int(Status.MAX_STEPS), -1)
                stop = torch.where(~(t_next > t_now), int(Status.UNDERFLOW), stop)
                stop = torch.where(torch.isnan(dt), int(Status.NON_FINITE), stop)   # NaN in the initial step
                rows = self._retire(res, rows, stop)
                continue
            y, f = rows["y"], rows["f"]

            # One Dormand-Prince step for every active row (torchdiffeq's _runge_kutta_step).
            dty, t0y, t1y = dt.to(dtype), t_now.to(dtype), t_next.to(dtype)
            coefs = table[:, :, None] * dty                      # [7, 7, N]: weight * dt, per row
            times = [*(t0y + inner_alpha[:, None] * dty), torch.nextafter(t1y, t1y - 1)]
            k = [f]
            for i in range(6):
                yi = _combine(y, k, weights[i], coefs[i])
                # alpha = 1 for the last two stages: torchdiffeq evaluates just before t1 (Perturb.PREV)
                k.append(field.at_times(times[min(i, 4)], yi))
            y1, f1 = yi, k[6]
            y_err = _combine(None, k, weights[6], coefs[6])
            ratio = field.rms(y_err / (atol + rtol * torch.max(y.abs(), y1.abs())))
            accept = ratio <= 1    # NaN compares False: rejected, and retired below

            # torchdiffeq's _optimal_step_size, per row.
            with torch.no_grad():
                r64 = ratio.detach().double()
                dfactor = torch.where(r64 < 1, 1.0, DFACTOR).to(torch.float64)
                # safety is a tensor, as in torchdiffeq: a Python float over a tensor would be
                # computed as float * reciprocal(tensor), which rounds differently.
                factor = torch.clamp(torch.maximum(safety / _pow(r64, 1.0 / DOPRI5_ORDER), dfactor), max=IFACTOR)
                factor = torch.where(r64 == 0, IFACTOR, factor)
                rows["dt"] = (dt * factor).clamp(min=0.0)

            if record_errors:
                res.step_sample.append(rows["idx"][accept])
                res.step_error.append(ratio[accept])
                res.step_dt.append(dt[accept])
                b_sol = DOPRI5_BETA[5]       # the 5th-order solution weights (k7's is 0)
                kinetic = sum(w * k[j].pow(2).reshape(len(y), -1).mean(1) for j, w in enumerate(b_sol) if w)
                # The last step may end past the grid (dense output interpolates back): count only
                # the part of it inside, as if f^2 were even across the step.
                inside = ((t[-1] - t_now) / dt).clamp(max=1.0).to(dtype)
                res.step_kinetic.append((kinetic * dty * inside)[accept])
            rows["attempts"] = rows["attempts"] + 1
            rows["accepted"] = rows["accepted"] + accept.long()
            self._dense_output(res, t, rows["ptr"], rows["idx"], accept, t_now, t_next, y, y1, k, dty, c_mid)

            if bool(accept.all()):
                rows["y"], rows["f"] = y1, f1
            else:
                acc_rows = _rows(accept, ndim)
                rows["y"] = torch.where(acc_rows, y1, y)
                rows["f"] = torch.where(acc_rows, f1, f)
            rows["t_now"] = torch.where(accept, t_next, t_now)
            stop = torch.where(torch.isnan(ratio), int(Status.NON_FINITE), -1)
            stop = torch.where(rows["ptr"] >= n_t, int(Status.OK), stop)
            if bool((stop >= 0).any()):
                rows = self._retire(res, rows, stop)
        return self._assemble(res, h0, n_t, record_errors)

    def _retire(self, res: _Results, rows: dict, stop: torch.Tensor) -> dict:
        """Record the results of rows whose ``stop`` status is set and drop them from the active set."""
        leaving = stop >= 0
        gone = rows["idx"][leaving]
        res.status[gone] = stop[leaving].to(torch.uint8)
        res.nfe[gone] = (2 if self.first_step is None else 1) + 6 * rows["attempts"][leaving]
        res.n_steps[gone] = rows["accepted"][leaving]
        keep = torch.nonzero(~leaving).flatten()      # one nonzero for all the row tensors
        return {name: value.index_select(0, keep) for name, value in rows.items()}

    @torch.no_grad()
    def _initial_step(self, field: VectorField, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor,
                      rtol: torch.Tensor, atol: torch.Tensor) -> torch.Tensor:
        """torchdiffeq's _select_initial_step (Hairer, Norsett & Wanner II.4), per row -> ``[N]`` float64."""
        dtype = y0.dtype
        scale = atol + torch.abs(y0) * rtol
        d0, d1 = field.rms(y0 / scale), field.rms(f0 / scale)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.tensor(1e-6, dtype=dtype, device=y0.device),
                         0.01 * d0 / d1).abs()
        y1 = y0 + _rows(h0, y0.ndim) * f0
        f1 = field.at_times((t0 + h0.double()).to(dtype), y1)
        d2 = torch.abs(field.rms((f1 - f0) / scale) / h0)
        h1 = torch.where((d1 <= 1e-15) & (d2 <= 1e-15),
                         torch.clamp(h0 * 1e-3, min=1e-6),
                         _pow(0.01 / torch.maximum(d1, d2), 1.0 / float(DOPRI5_ORDER)))
        return torch.minimum(100 * h0, h1.abs()).double()

    @staticmethod
    def _dense_output(res: _Results, t: torch.Tensor, ptr: torch.Tensor, idx: torch.Tensor,
                      accept: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, y0: torch.Tensor,
                      y1: torch.Tensor, k: list[torch.Tensor], dty: torch.Tensor, c_mid: torch.Tensor) -> None:
        """Emit every grid time an accepted step passed, by torchdiffeq's 4th-order interpolant.

        Advances ``ptr`` in place for the rows that emitted.
        """
        n_t = len(t)
        due = accept & (ptr < n_t) & (t[ptr.clamp(max=n_t - 1)] <= t1)
        if not bool(due.any()):
            return
        rows = torch.nonzero(due).flatten()
        y0r, y1r, kr = y0[rows], y1[rows], [kj[rows] for kj in k]
        dtr = _rows(dty[rows], y0.ndim)
        y_mid = _combine(y0r, kr, DOPRI5_C_MID, c_mid[:, None] * dty[rows])
        f0r, f1r = kr[0], kr[-1]
        coeffs = [
            y0r,
            dtr * f0r,
            dtr * (f1r - 4 * f0r) - 11 * y0r - 5 * y1r + 16 * y_mid,
            dtr * (5 * f0r - 3 * f1r) + 18 * y0r + 14 * y1r - 32 * y_mid,
            2 * dtr * (f1r - f0r) - 8 * (y1r + y0r) + 16 * y_mid,
        ]
        while len(rows):
            tq = t[ptr[rows]]
            x = _rows(((tq - t0[rows]) / (t1[rows] - t0[rows])).to(y0.dtype), y0.ndim)
            total = coeffs[0] + x * coeffs[1]
            x_power = x
            for c in coeffs[2:]:
                x_power = x_power * x
                total = total + x_power * c
            res.output(ptr[rows].clone(), idx[rows], total)
            ptr[rows] += 1
            nxt = ptr[rows]
            more = (nxt < n_t) & (t[nxt.clamp(max=n_t - 1)] <= t1[rows])
            rows = rows[more]
            coeffs = [c[more] for c in coeffs]

    @staticmethod
    def _assemble(res: _Results, h0: torch.Tensor, n_t: int, record_errors: bool) -> Solution:
        n = len(h0)
        time_idx = torch.cat(res.out_time)
        sample_idx = torch.cat(res.out_sample)
        values = torch.cat(res.out_value)
        ys = torch.full((n_t, n, *h0.shape[1:]), float("nan"), dtype=h0.dtype, device=h0.device)
        ys = ys.index_put((time_idx, sample_idx), values)
        step_errors = None
        if record_errors:
            step_errors = StepErrors(sample=torch.cat(res.step_sample), error=torch.cat(res.step_error),
                                     dt=torch.cat(res.step_dt), kinetic=torch.cat(res.step_kinetic))
        return Solution(ys=ys, nfe=res.nfe, status=res.status, n_steps=res.n_steps, step_errors=step_errors)
