"""Embedded Runge-Kutta methods with step-size control per sample inside the batch.

One implementation for every adaptive method: a method is its tableau (``tableaus.EmbeddedTableau``)
and its controller (``control.StepControl``). Each sample has its own step size, accept/reject
decisions, NFE, status and time grid. Samples that reach the end of their grid (or fail) are masked
at once (their results recorded, their state frozen) and leave the active set at the next compaction,
every ``compact_every`` steps: later steps run f on fewer rows, so easy samples stop costing
evaluations. Compacting every step (the default) spends one host sync a step on it; a larger interval
spends fewer syncs and evaluates finished rows, masked, until the next compaction. With the
torchdiffeq controller, initial step selection, norm, step-size control, mixed precision (times in
float64, stages in the state's dtype) and dense output copy torchdiffeq 0.2.5 operation for
operation, down to its rounding (``rounding``), so a sample solved here gives what it gives alone
in torchdiffeq (bit for bit for dopri5, tested), whichever samples share its batch. torchdiffeq's
``step_t`` and ``jump_t`` options (times a step must stop at; ``marks``) are kept per sample too.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field as dc_field
from typing import Any, ClassVar

import torch

from dise_cli.integrators.base import Integrator, Solution, Status, StepErrors
from dise_cli.integrators.control import CONTROLS, SAFETY, StepControl
from dise_cli.integrators.marks import (advance_pointer, first_pointer, just_after, mark_tensor, mark_times,
                                        marks_text, stop_at_mark)
from dise_cli.integrators.rounding import combine, per_row
from dise_cli.integrators.tableaus import EmbeddedTableau
from dise_cli.integrators.tolerances import (PerElement, Tolerance, number_text, positive, scaled, tolerance_tensor,
                                             tolerance_text)
from dise_cli.integrators.vector_field import VectorField

DEFAULT_MAX_STEPS = 10_000


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


class EmbeddedRK(Integrator):
    """An adaptive embedded Runge-Kutta method. NFE = 2 (the first stage and the initial step
    selection; 1 with ``first_step``) + the tableau's evaluations per attempted step + 1 per
    accepted step onto a ``jump_t`` time (f again just after it)."""

    adaptive = True
    tableau: ClassVar[EmbeddedTableau]
    default_control: ClassVar[str] = "torchdiffeq"
    compact_every: int = 1        # steps between compactions of the active set (results do not depend on it)

    def __init__(self, rtol: Tolerance = 1e-3, atol: Tolerance = 1e-3, max_steps: int = DEFAULT_MAX_STEPS,
                 first_step: float | None = None, control: str | None = None, step_t: Any = None,
                 jump_t: Any = None):
        if not positive(rtol) or not positive(atol):
            raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if first_step is not None and not first_step > 0:
            raise ValueError(f"first_step must be > 0, got {first_step}")
        control = control or self.default_control
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {', '.join(CONTROLS)}, got '{control}'")
        # a number, or one per element of a sample's state (``tolerances``)
        self.rtol: Tolerance = rtol if isinstance(rtol, PerElement) else float(rtol)
        self.atol: Tolerance = atol if isinstance(atol, PerElement) else float(atol)
        self.max_steps = int(max_steps)
        self.first_step = None if first_step is None else float(first_step)   # as torchdiffeq's option
        self.control: StepControl = CONTROLS[control]
        # times in the model's time that steps stop at (torchdiffeq's options; ``marks``), sorted
        self.step_t = mark_times(step_t, "step_t")
        self.jump_t = mark_times(jump_t, "jump_t")
        shared = sorted(set(self.step_t) & set(self.jump_t))
        if shared:
            raise ValueError(f"step_t and jump_t must not share a time, got {', '.join(map(number_text, shared))}")
        if (self.step_t or self.jump_t) and self.control.lands_on_outputs:
            raise ValueError("step_t and jump_t are torchdiffeq's options: they need control=torchdiffeq")

    @property
    def spec(self) -> str:
        spec = f"{self.name}:rtol={tolerance_text(self.rtol)},atol={tolerance_text(self.atol)}"
        if self.max_steps != DEFAULT_MAX_STEPS:
            spec += f",max_steps={self.max_steps}"
        if self.first_step is not None:
            spec += f",first_step={number_text(self.first_step)}"
        if self.step_t:
            spec += f",step_t={marks_text(self.step_t)}"
        if self.jump_t:
            spec += f",jump_t={marks_text(self.jump_t)}"
        if self.control.name != self.default_control:
            spec += f",control={self.control.name}"
        return spec

    def loosened(self, factor: float = 10.0) -> "EmbeddedRK":
        return type(self)(rtol=scaled(self.rtol, factor), atol=scaled(self.atol, factor), max_steps=self.max_steps,
                          first_step=self.first_step, control=self.control.name, step_t=self.step_t,
                          jump_t=self.jump_t)

    def _solve(self, field: VectorField, h0: torch.Tensor, t: torch.Tensor, record_errors: bool,
               f0: torch.Tensor | None) -> Solution:
        tab, control = self.tableau, self.control
        dtype, device, n, ndim = h0.dtype, h0.device, len(h0), h0.ndim
        n_t = t.shape[-1]
        # Stage weights, then the solution's (unless it is the last stage's argument), then the error's,
        # as one zero-padded table: one product with dt gives every coefficient of a step.
        weights = [*tab.beta, *([] if tab.fsal else [tab.b]), tab.b_err]
        width = len(tab.b_err)
        table = torch.tensor([list(w) + [0.0] * (width - len(w)) for w in weights], dtype=dtype, device=device)
        alpha = torch.tensor(tab.alpha, dtype=dtype, device=device)
        mid = torch.tensor(tab.mid, dtype=dtype, device=device) if tab.mid else None
        context = field.layout.context if field.layout is not None else 0
        rtol = tolerance_tensor(self.rtol, h0, context, f"{self.spec}: rtol")
        atol = tolerance_tensor(self.atol, h0, context, f"{self.spec}: atol")
        safety = torch.tensor(SAFETY, dtype=torch.float64, device=device)
        # the stops in the solver's time (a backward solve's field has sign -1: its time is -t)
        step_marks = mark_tensor(self.step_t, field.sign, device)
        jump_marks = mark_tensor(self.jump_t, field.sign, device)

        res = _Results(nfe=torch.zeros(n, dtype=torch.int64, device=device),
                       status=torch.zeros(n, dtype=torch.uint8, device=device),
                       n_steps=torch.zeros(n, dtype=torch.int64, device=device))
        idx = torch.arange(n, device=device)
        res.output(torch.zeros(n, dtype=torch.long, device=device), idx, h0)

        t0 = t[:, 0] if t.ndim == 2 else t[0].expand(n)
        if f0 is None:
            shared = bool((t0 == t0[0]).all())
            f0 = field(t0[0].to(dtype), h0) if shared else field.at_times(t0.to(dtype), h0)
        rows = {  # per active row; compacted together when rows leave
            "idx": idx, "y": h0, "f": f0,
            **({"grid": t} if t.ndim == 2 else {}),       # a grid per sample: compacted with its row
            "t_now": t0.clone(),
            "dt": (control.initial_step(field, t0, h0, f0, rtol, atol, tab.order) if self.first_step is None
                   else torch.full((n,), self.first_step, dtype=torch.float64, device=device)),
            "ptr": torch.ones(n, dtype=torch.long, device=device),   # next grid index to output
            "attempts": torch.zeros(n, dtype=torch.int64, device=device),
            "accepted": torch.zeros(n, dtype=torch.int64, device=device),
            "live": torch.ones(n, dtype=torch.bool, device=device),  # not finished: a finished row is frozen
            "code": torch.zeros(n, dtype=torch.uint8, device=device),  # its status, once finished
            "jumps": torch.zeros(n, dtype=torch.int64, device=device),  # accepted steps onto a jump_t time
            # each row's next step_t and jump_t time (an index into the marks)
            **({"step_ptr": first_pointer(step_marks, t0)} if step_marks is not None else {}),
            **({"jump_ptr": first_pointer(jump_marks, t0)} if jump_marks is not None else {}),
        }
        n_fixed = 2 if self.first_step is None else 1

        def planned(rows: dict):
            """This step's size and end for every row: torchdyn's landing on outputs (whether a step was
            cut, and what was left), or torchdiffeq's stops at step_t and jump_t times (which rows stop
            at one of each)."""
            if control.lands_on_outputs:
                return (*_land(rows, t, rows["dt"], n_t), None, None)
            return _stop_at_marks(rows, step_marks, jump_marks)

        for iteration in itertools.count():
            t_now = rows["t_now"]
            dt, t_next, cut, rest, on_step, on_jump = planned(rows)
            forward = t_next > t_now                                  # False for a NaN dt too
            cannot = (rows["attempts"] >= self.max_steps) | ~forward
            code = torch.where(forward, int(Status.MAX_STEPS), int(Status.UNDERFLOW))
            code = torch.where(torch.isnan(dt), int(Status.NON_FINITE), code)   # NaN in the initial step
            _finish(rows, cannot, code)                   # rows that cannot step: frozen
            if iteration % self.compact_every == 0:
                self._record_results(res, rows, n_fixed)
                keep = torch.nonzero(rows["live"]).flatten()     # the one sync that decides the loop
                if not len(keep):
                    break
                if len(keep) < len(rows["idx"]):
                    rows = {name: value.index_select(0, keep) for name, value in rows.items()}
                    t_now = rows["t_now"]
                    if control.lands_on_outputs:      # the plan of the rows kept (cheaper than landing again)
                        dt, t_next, cut, rest = (v.index_select(0, keep) for v in (dt, t_next, cut, rest))
                    else:
                        dt, t_next, cut, rest, on_step, on_jump = planned(rows)
            live = rows["live"]
            y, f = rows["y"], rows["f"]

            # One step of the method for every active row (torchdiffeq's _runge_kutta_step).
            dty, t0y, t1y = dt.to(dtype), t_now.to(dtype), t_next.to(dtype)
            coefs = table[:, :, None] * dty                      # [rows of the table, stages, N]
            times = t0y + alpha[:, None] * dty                   # [stages, N]
            end = torch.nextafter(t1y, t1y - 1) if control.perturb_end else t1y
            k = [f]
            for i, a_i in enumerate(tab.alpha):
                yi = combine(y, k, tab.beta[i], coefs[i])
                # stages at the step's end: just before it for torchdiffeq (Perturb.PREV)
                k.append(field.at_times(end if a_i == 1.0 else times[i], yi))
            if tab.fsal:
                y1 = yi
            else:
                y1 = combine(y, k, tab.b, coefs[len(tab.beta)])
            f1 = k[-1]
            y_err = combine(None, k, tab.b_err, coefs[-1])
            ratio = field.rms(y_err / (atol + rtol * torch.max(y.abs(), y1.abs())))
            accept = (ratio <= 1) & live    # NaN compares False: rejected, and finished below
            with torch.no_grad():
                base = dt if cut is None else torch.where(cut, rest, dt)    # torchdyn: what was left of a cut step
                rows["dt"] = control.next_step(base, ratio, tab.order, safety)

            if record_errors:
                self._record(res, rows, accept, ratio, dt, dty, k, grid_end=_grid(rows, t)[..., -1], t_now=t_now)
            rows["attempts"] = rows["attempts"] + live.long()
            rows["accepted"] = rows["accepted"] + accept.long()
            any_jump = False
            if control.lands_on_outputs:
                all_accepted = bool(accept.all())
                _emit_landed(res, rows, t, accept, t_next, y1, n_t)
            else:
                if step_marks is not None:
                    rows["step_ptr"] = advance_pointer(rows["step_ptr"], accept & on_step, len(step_marks))
                jumped = None if jump_marks is None else accept & on_jump
                if jumped is not None:
                    rows["jump_ptr"] = advance_pointer(rows["jump_ptr"], jumped, len(jump_marks))
                    rows["jumps"] = rows["jumps"] + jumped.long()
                due = _due(rows, t, accept, t_next, n_t)
                flags = [accept.all(), due.any(), *([] if jumped is None else [jumped.any()])]
                all_accepted, any_due, *jumps = torch.stack(flags).tolist()          # one sync for them all
                any_jump = any(jumps)
                if any_due:
                    _dense_output(res, rows, t, due, t_now, t_next, y, y1, k, dty, mid, tab.mid, n_t)
            if any_jump:
                f1 = _f_past_jumps(field, f1, jumped, t_next, y1)

            if all_accepted:
                rows["y"], rows["f"] = y1, f1
            else:
                acc_rows = per_row(accept, ndim)
                rows["y"] = torch.where(acc_rows, y1, y)
                rows["f"] = torch.where(acc_rows, f1, f)
            rows["t_now"] = torch.where(accept, t_next, t_now)
            done = rows["ptr"] >= n_t
            _finish(rows, done | torch.isnan(ratio), torch.where(done, int(Status.OK), int(Status.NON_FINITE)))
        return self._assemble(res, h0, n_t, record_errors)

    def _record(self, res: _Results, rows: dict, accept: torch.Tensor, ratio: torch.Tensor, dt: torch.Tensor,
                dty: torch.Tensor, k: list[torch.Tensor], grid_end: torch.Tensor, t_now: torch.Tensor) -> None:
        """Every accepted step's error estimate (with gradients) and its share of the kinetic energy,
        by the method's own quadrature of the mean squared f over the step."""
        res.step_sample.append(rows["idx"][accept])
        res.step_error.append(ratio[accept])
        res.step_dt.append(dt[accept])
        n = len(k[0])
        kinetic = sum(w * k[j].pow(2).reshape(n, -1).mean(1) for j, w in enumerate(self.tableau.b) if w)
        # The last step may end past the grid (dense output interpolates back): count only the part of
        # it inside, as if f^2 were even across the step.
        inside = ((grid_end - t_now) / dt).clamp(max=1.0).to(dty.dtype)
        res.step_kinetic.append((kinetic * dty * inside)[accept])

    def _record_results(self, res: _Results, rows: dict, n_fixed: int) -> None:
        """Status, NFE and accepted steps of every active row, as they stand (a finished row's are final:
        its counts are frozen; a live row's are written again at the next compaction)."""
        idx = rows["idx"]
        res.status[idx] = rows["code"]
        res.nfe[idx] = n_fixed + self.tableau.evaluations * rows["attempts"] + rows["jumps"]
        res.n_steps[idx] = rows["accepted"]

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
            cat = lambda parts, dtype: torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=h0.device)  # noqa: E731
            step_errors = StepErrors(sample=cat(res.step_sample, torch.long), error=cat(res.step_error, h0.dtype),
                                     dt=cat(res.step_dt, h0.dtype), kinetic=cat(res.step_kinetic, h0.dtype))
        return Solution(ys=ys, nfe=res.nfe, status=res.status, n_steps=res.n_steps, step_errors=step_errors)


def _finish(rows: dict, stopping: torch.Tensor, code: torch.Tensor) -> None:
    """Freeze the live rows that are ``stopping``, keeping their status ``code``: they stop counting
    attempts and changing state, and leave at the next compaction. Nothing is read back to the host."""
    ending = rows["live"] & stopping
    rows["code"] = torch.where(ending, code.to(torch.uint8), rows["code"])
    rows["live"] = rows["live"] & ~stopping


def _stop_at_marks(rows: dict, step_marks: torch.Tensor | None, jump_marks: torch.Tensor | None):
    """torchdiffeq's step for every row, shortened to end on the row's next step_t time, then on its
    next jump_t time, where it would pass them (``marks``; a jump_t stop overrides a step_t one).
    Returns the step, its end, two Nones (no landing on outputs) and which rows stop at a step_t
    time and at a jump_t time (None where there are no such times)."""
    t_now, dt = rows["t_now"], rows["dt"]
    t_next = t_now + dt
    on_step = on_jump = None
    if step_marks is not None:
        dt, t_next, on_step = stop_at_mark(step_marks, rows["step_ptr"], t_now, dt, t_next)
    if jump_marks is not None:
        dt, t_next, on_jump = stop_at_mark(jump_marks, rows["jump_ptr"], t_now, dt, t_next)
        if on_step is not None:
            on_step = on_step & ~on_jump
    return dt, t_next, None, None, on_step, on_jump


def _f_past_jumps(field: VectorField, f1: torch.Tensor, jumped: torch.Tensor, t_next: torch.Tensor,
                  y1: torch.Tensor) -> torch.Tensor:
    """The rows' f at the end of their step, evaluated again just after the end where an accepted
    step ended on a jump_t time (torchdiffeq's ``Perturb.NEXT``), so that the next step starts from
    f on the far side of the discontinuity. The step's own stages (its dense output) keep the f
    evaluated just before it."""
    sel = torch.nonzero(jumped).flatten()
    after = just_after(t_next.index_select(0, sel).to(y1.dtype))
    return f1.index_copy(0, sel, field.at_times(after, y1.index_select(0, sel)))


def _grid(rows: dict, t: torch.Tensor) -> torch.Tensor:
    """The active rows' grids ``[n, T]``, or the batch's ``[T]``."""
    return rows.get("grid", t)


def _time_at(rows: dict, t: torch.Tensor, ptr: torch.Tensor, sel: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's grid time at index ``ptr`` (of the rows ``sel``, or of every active row)."""
    grid = rows.get("grid")
    if grid is None:
        return t[ptr]
    grid = grid if sel is None else grid[sel]
    return grid.gather(1, ptr[:, None])[:, 0]


def _next_output(rows: dict, t: torch.Tensor, n_t: int) -> torch.Tensor:
    """Each active row's next output time."""
    return _time_at(rows, t, rows["ptr"].clamp(max=n_t - 1))


def _land(rows: dict, t: torch.Tensor, dt: torch.Tensor, n_t: int):
    """torchdyn's stepping onto output times: a step is cut to end at the end of the grid, then at
    the next output time; after a cut at an output time short of the end, the next step size grows
    from what was left of the cut step (``dt_old - dt``). Returns the step, its end (exactly the
    output time where it lands), whether it was cut at an output time, and what was left."""
    t_now = rows["t_now"]
    dt = torch.minimum(dt, _grid(rows, t)[..., -1] - t_now)
    target = _next_output(rows, t, n_t)
    cut = t_now + dt > target
    rest = dt - (target - t_now)
    dt = torch.where(cut, target - t_now, dt)
    t_next = torch.where(t_now + dt >= target, target, t_now + dt)
    return dt, t_next, cut, rest


def _emit_landed(res: _Results, rows: dict, t: torch.Tensor, accept: torch.Tensor, t_next: torch.Tensor,
                 y1: torch.Tensor, n_t: int) -> None:
    """Output the state of every accepted step that landed on its row's next output time."""
    landed = accept & (rows["ptr"] < n_t) & (t_next == _next_output(rows, t, n_t))
    if bool(landed.any()):
        where = torch.nonzero(landed).flatten()
        res.output(rows["ptr"][where].clone(), rows["idx"][where], y1[where])
        rows["ptr"][where] += 1


def _due(rows: dict, t: torch.Tensor, accept: torch.Tensor, t1: torch.Tensor, n_t: int) -> torch.Tensor:
    """The accepted steps that passed their row's next output time."""
    return accept & (rows["ptr"] < n_t) & (_next_output(rows, t, n_t) <= t1)


def _dense_output(res: _Results, rows: dict, t: torch.Tensor, due: torch.Tensor, t0: torch.Tensor,
                  t1: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, k: list[torch.Tensor], dty: torch.Tensor,
                  mid: torch.Tensor, mid_weights: tuple[float, ...], n_t: int) -> None:
    """Emit every output time the ``due`` steps passed, by torchdiffeq's 4th-order interpolant through
    y0, y1, the step's midpoint (the tableau's ``mid`` weights), f0 and f1. Advances ``ptr``."""
    ptr = rows["ptr"]
    sel = torch.nonzero(due).flatten()
    y0r, y1r, kr = y0[sel], y1[sel], [kj[sel] for kj in k]
    dtr = per_row(dty[sel], y0.ndim)
    y_mid = combine(y0r, kr, mid_weights, mid[:, None] * dty[sel])
    f0r, f1r = kr[0], kr[-1]
    coeffs = [
        y0r,
        dtr * f0r,
        dtr * (f1r - 4 * f0r) - 11 * y0r - 5 * y1r + 16 * y_mid,
        dtr * (5 * f0r - 3 * f1r) + 18 * y0r + 14 * y1r - 32 * y_mid,
        2 * dtr * (f1r - f0r) - 8 * (y1r + y0r) + 16 * y_mid,
    ]
    while len(sel):
        tq = _time_at(rows, t, ptr[sel], sel)
        x = per_row(((tq - t0[sel]) / (t1[sel] - t0[sel])).to(y0.dtype), y0.ndim)
        total = coeffs[0] + x * coeffs[1]
        x_power = x
        for c in coeffs[2:]:
            x_power = x_power * x
            total = total + x_power * c
        res.output(ptr[sel].clone(), rows["idx"][sel], total)
        ptr[sel] += 1
        nxt = ptr[sel]
        more = torch.nonzero((nxt < n_t) & (_time_at(rows, t, nxt.clamp(max=n_t - 1), sel) <= t1[sel])).flatten()
        sel = sel.index_select(0, more)        # one sync for the rows that pass another output time
        coeffs = [c.index_select(0, more) for c in coeffs]
