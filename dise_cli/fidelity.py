"""The fidelity check: before a command uses a model, run the model as it is on a few samples and
compare its outputs with dise's reproduction by the baseline candidate (the model's own solver).

A correct reading differs from the model only as much as two valid solves at the baseline's
tolerance differ: dise's solve steps per sample while a library steps the whole batch, torchdyn
lands on output times its own way. That part is measured, not assumed: the difference between
dise's solve and the same method at ``LOOSER`` times the tolerance bounds it (times ``MARGIN``).
A fixed-grid baseline reproduces the model's own steps, so only round-off (``FLOOR`` of the
outputs' scale, ``LOOP_FLOOR`` for a hand-written loop dise identified by its calls of f, or
``COARSE_ULPS`` units of f's own dtype where f computes in a coarser one, as under bfloat16 autocast)
is allowed. Where dise runs only the closest it has to the model's solver (the
method without an option it does not copy, such as ``safety`` or ``perturb``), the model's error at
the same tolerance is not dise's: then the yardstick is the solve's own effect, and up to
``CLOSEST_SHARE`` of what one Euler step gets wrong is allowed (a misreading changes more than a
coarse solver does). A model whose output is random (a Hutchinson trace, a sampled latent) is run
again with another seed and once more with the same one: where the same seed gives the same output and
f itself draws nothing per call, dise's reproduction makes the same draws in the same order, so it is
held to the tolerance alone (``draws = "same"``); otherwise (noise from a generator the model owns, or
drawn in every call of f, where dise's solver calls f another number of times) the model's own spread
is allowed too (``draws = "spread"``). A misreading (a skipped encoder, the wrong state, a swapped
argument order) changes the outputs by far more.

The batch's allowance is generous (about thirty times a solve's own error), so a small misreading (an
end time of 1.03 read as 1, a guidance branch given the wrong time) could hide in it. A sample solved
alone takes the same steps in the model's solver and in dise's copy of it, so where dise saw the
model's solver and copies it exactly, and the model repeats itself, ``ALONE_SAMPLES`` samples are also
run one at a time and held to round-off, or to ``MARGIN`` times the solve's own error at its tolerance
(its difference from the same method at a tenth of it), which covers a step accepted on one side of
round-off and rejected on the other.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from dise_cli.errors import InputError, first_line
from dise_cli.integrators import Euler, Integrator, Status
from dise_cli.integrators.vector_field import rows_agree
from dise_cli.odemodel import OdeModel
from dise_cli.seeding import seeded

FIDELITY_SAMPLES = 8
LOOSER = 10.0
CLOSEST_SHARE = 0.5
MARGIN = 3.0
FLOOR = 1e-4
LOOP_FLOOR = 1e-5      # a hand-written loop dise identified takes its very steps: round-off of float32 times only
COARSE_ULPS = 2        # f of a coarser dtype than its state: round-off of this many of its units is allowed
NOISE_SHARE = 0.5       # a spread dise cannot repeat beyond this share of one Euler step's effect: refused
ALONE_SAMPLES = 2       # samples also compared one at a time, where dise's copy of the solver is exact


@dataclass
class Fidelity:
    samples: int
    baseline: str
    difference: float        # the largest |model - dise| over every output element
    allowed: float           # what the baseline's tolerance (and the model's own randomness) explains
    tolerance_part: float
    randomness_part: float
    closest_part: float      # only where dise runs the closest method it has, not the model's own
    passed: bool
    draws: str = "none"      # none: the model is not random; same: compared with the same draws; spread: not
    alone_difference: float | None = None   # the largest |model - dise| over samples solved one at a time
    alone_allowed: float | None = None      # None: not compared alone (see ``ALONE_SAMPLES``)

    @property
    def alone_passed(self) -> bool:
        return self.alone_allowed is None or self.alone_difference <= self.alone_allowed

    def to_dict(self) -> dict:
        return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _seeded(fn, seed: int, device: torch.device):
    """``fn()`` with every global generator seeded (see ``dise_cli.seeding``)."""
    with seeded(seed, device):
        return fn()


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest elementwise difference; NaN/Inf where only one of them is finite counts as infinite."""
    if a.shape != b.shape:
        return float("inf")
    a, b = a.detach().double(), b.detach().double()
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb):
        return float("inf")
    return float((a - b)[fa].abs().max()) if bool(fa.any()) else 0.0


def output_scale(out) -> float:
    """1 + the largest finite |output|: what round-off allowances (``FLOOR``) are fractions of."""
    if not isinstance(out, torch.Tensor):
        return 1.0
    finite = out.detach()[torch.isfinite(out.detach())]
    return 1.0 + (float(finite.abs().max()) if finite.numel() else 0.0)


def round_off(out, f_dtypes, loop: bool = False) -> float:
    """What round-off may change in outputs ``out`` of a fixed-step solve that takes the model's own
    steps: ``FLOOR`` of their scale (``LOOP_FLOOR`` for a hand-written loop dise identified), or
    ``COARSE_ULPS`` units of f's dtype where f computes in a coarser one (``f_dtypes``: those f returned)."""
    coarse = [COARSE_ULPS * torch.finfo(d).eps for d in f_dtypes if d is not None and d.is_floating_point]
    return max([LOOP_FLOOR if loop else FLOOR, *coarse]) * output_scale(out)


@torch.no_grad()
def check_rows_alone(ode: OdeModel, x: torch.Tensor) -> bool | None:
    """f gives each sample of a batch what it gives the sample alone, at the solve's first time.
    ``InputError`` for f that reads a sample's position in its batch, or the batch's size (labels made
    with ``arange(len(x))`` inside f): dise's per-sample solves move rows around as they finish. f that
    draws noise on every call is not compared (two calls never agree). Returns whether f gives the same
    answer on every call (None: not known, a single sample)."""
    if len(x) < 2:
        return None
    problem = ode.encode(x)
    field, h0 = problem.field, problem.h0
    t0 = problem.t[..., 0].to(h0.dtype)

    def f(h, rows=slice(None)):
        return field(t0, h) if t0.ndim == 0 else field.at_times(t0[rows], h)
    device = h0.device
    batch = _seeded(lambda: f(h0), 1, device)
    if not torch.equal(batch, _seeded(lambda: f(h0), 2, device)):
        return False
    alone = torch.cat([_seeded(lambda i=i: f(h0[i:i + 1], slice(i, i + 1)), 1, device) for i in range(len(h0))])
    if not rows_agree(batch, alone):
        raise InputError(f"the ODE function gives a sample another answer in a batch of {len(h0)} than alone (it reads "
                         f"the sample's position in the batch or the batch's size, e.g. labels made with "
                         f"arange(len(x)) inside f); dise solves every sample on its own and cannot reproduce it")
    return True


@torch.no_grad()
def check_fidelity(ode: OdeModel, x: torch.Tensor, baseline: Integrator, exact: bool = True,
                   seed: int = 0) -> Fidelity | None:
    """Compare the model as it is with dise's reproduction by ``baseline`` (``exact``: the model's own
    method and step control, else the closest dise has) on the first ``FIDELITY_SAMPLES`` rows of
    ``x``. None for a bare vector field (it has no solver of its own to compare with)."""
    x = x[:FIDELITY_SAMPLES]
    f_steady = check_rows_alone(ode, x)
    if ode.how == "bare":
        return None
    device = x.device
    statuses: list[torch.Tensor] = []
    fields = []

    def reproduce(integrator: Integrator, rows: torch.Tensor = x) -> torch.Tensor:
        def solve(problem):
            sol = integrator.solve(problem.field, problem.h0, problem.t)
            statuses.append(sol.status)
            fields.append(problem.field)
            return sol.ys
        return ode.solve_and_decode(rows, ode.encode(rows) if ode.splittable else None, solve)

    try:
        model_out = _seeded(lambda: ode.run(x), seed, device)
    except Exception as exc:  # noqa: BLE001 - the model failing on its own is the user's to know
        raise InputError(f"the model fails when run as it is on {len(x)} samples ({type(exc).__name__}: "
                         f"{first_line(exc)}), so dise cannot check its reading") from None
    dise_out = _seeded(lambda: reproduce(baseline), seed, device)
    failed = any(bool((s != int(Status.OK)).any()) for s in statuses)
    randomness = max_abs(model_out, _seeded(lambda: ode.run(x), seed + 1, device))
    draws = "none"
    if randomness > 0:
        repeats = max_abs(model_out, _seeded(lambda: ode.run(x), seed, device)) == 0
        draws = "same" if repeats and f_steady else "spread"
    loose = baseline.loosened(LOOSER)
    tolerance = MARGIN * max_abs(dise_out, _seeded(lambda: reproduce(loose), seed, device)) if loose else 0.0
    closest = 0.0 if exact else CLOSEST_SHARE * max_abs(dise_out, _seeded(lambda: reproduce(Euler(steps=1)),
                                                                           seed, device))
    # f computed in a coarser dtype (bfloat16 under autocast) rounds the model's own steps at its precision
    floor = round_off(model_out, [f.f_dtype for f in fields], loop=ode.own is not None and ode.own.is_loop)
    difference = float("inf") if failed else max_abs(model_out, dise_out)
    spread = MARGIN * randomness if draws == "spread" else 0.0
    if draws == "spread":
        # draws dise cannot repeat are in every candidate's outputs: judging integrators needs the largest
        # solver effect (one Euler step against the baseline) to stand well above them
        euler = max_abs(dise_out, _seeded(lambda: reproduce(Euler(steps=1)), seed, device))
        if randomness > NOISE_SHARE * euler:
            raise InputError(f"the model's outputs change by up to {randomness:.3g} from one run to the next, by "
                             f"random draws dise cannot repeat (a generator the model owns, or noise f draws in "
                             f"every call), as much as one Euler step changes them ({euler:.3g}): every integrator "
                             f"would be judged on that noise. Draw it from torch's global generator once per "
                             f"forward, or fix it")
    parts = [v if v != float("inf") else 0.0 for v in (tolerance, spread, closest)]
    allowed = max(*parts, floor)
    alone = None
    # only a solver dise saw and copies exactly takes the model's steps (a guessed one is judged in the batch)
    if loose is not None and exact and ode.own is not None and draws != "spread" and len(x) > 1 \
            and difference <= allowed:
        alone = _compare_alone(ode, x, model_out, baseline, reproduce, floor, seed)
    alone_difference, alone_allowed = alone or (None, None)
    return Fidelity(samples=len(x), baseline=baseline.spec, difference=difference, allowed=allowed,
                    tolerance_part=parts[0], randomness_part=parts[1], closest_part=parts[2],
                    passed=difference <= allowed and (alone is None or alone[0] <= alone[1]), draws=draws,
                    alone_difference=alone_difference, alone_allowed=alone_allowed)


def _compare_alone(ode: OdeModel, x: torch.Tensor, model_out: torch.Tensor, baseline: Integrator, reproduce,
                   floor: float, seed: int) -> tuple[float, float] | None:
    """The largest |model - dise| over the first ``ALONE_SAMPLES`` samples each solved alone, and what
    is allowed there: round-off, or a step taken on the other side of it (``MARGIN`` times the solve's
    error, its difference from the same method at a tenth of the tolerance). None where the model
    cannot be run on one sample as on many (it fails, or its output takes another shape: a
    ``squeeze()``), or dise's solve does not finish: the batch comparison stands alone then."""
    tighter = baseline.loosened(1 / LOOSER)
    device = x.device
    difference, allowed = 0.0, floor
    for i in range(min(ALONE_SAMPLES, len(x))):
        row = x[i:i + 1]
        try:
            model_row = _seeded(lambda: ode.run(row), seed, device)
        except Exception:  # noqa: BLE001 - a model that cannot run one sample: compared in a batch only
            return None
        if not isinstance(model_row, torch.Tensor) or model_row.shape != model_out[i:i + 1].shape:
            return None
        dise_row = _seeded(lambda: reproduce(baseline, row), seed, device)
        own_error = max_abs(dise_row, _seeded(lambda: reproduce(tighter, row), seed, device))
        if own_error == float("inf"):
            return None
        difference = max(difference, max_abs(model_row, dise_row))
        allowed = max(allowed, MARGIN * own_error)
    return difference, allowed


@torch.no_grad()
def confirm_loop(ode: OdeModel, x: torch.Tensor, dise_out: torch.Tensor, seed: int, rows: str) -> None:
    """A hand-written loop is identified on the few samples dise reads the model on; each batch the
    profile runs confirms it: the model as it is against dise's run of its loop (``dise_out``), held
    to ``LOOP_FLOOR`` (or f's coarser dtype's round-off). ``InputError`` where they differ: the loop
    does what those samples did not show (a clamp other inputs reach, steps that follow the batch's
    size or values)."""
    own = _seeded(lambda: ode.run(x), seed, x.device)
    allowed = round_off(own, [ode.field.f_dtype], loop=True)
    difference = max_abs(own, dise_out)
    if difference > allowed:
        raise InputError(f"the model's hand-written loop and dise's {ode.own.method} differ by up to "
                         f"{difference:.3g} on {rows}, beyond round-off ({allowed:.3g}), though they agree on the "
                         f"{FIDELITY_SAMPLES} samples dise read the model on: the loop does what those did not show "
                         f"(a clamp other inputs reach, steps that follow the batch's size or values), and dise "
                         f"cannot route it; write the loop with torchdiffeq's odeint, or keep such steps out of it")


def fidelity_error(check: Fidelity, ode: OdeModel, model_name: str, hint: str) -> InputError:
    """The one line for a reading that does not reproduce the model."""
    diff = "a failed or non-finite solve" if check.difference == float("inf") else f"up to {check.difference:.3g}"
    same = " (the model's random draws the same in both)" if check.draws == "same" else ""
    if check.difference <= check.allowed and not check.alone_passed:
        return InputError(f"dise does not reproduce {model_name}: solved one sample at a time, the model's own outputs "
                          f"and dise's with {check.baseline}{same} differ by up to {check.alone_difference:.3g}, "
                          f"beyond the {check.alone_allowed:.3g} round-off and the solve's own error explain there "
                          f"(the same solver takes the same steps on one sample; in a batch of {check.samples} "
                          f"they differ by {check.difference:.3g}, within its tolerance); dise read "
                          f"{reading_line(ode)}; {hint}")
    return InputError(f"dise does not reproduce {model_name}: on {check.samples} samples the model's own outputs and "
                      f"dise's with {check.baseline}{same} differ by {diff}, beyond the {check.allowed:.3g} its "
                      f"tolerance explains; dise read {reading_line(ode)}; {hint}")


def reading_line(ode: OdeModel) -> str:
    """What dise took as the solve, in one phrase."""
    t = ode.t_span.tolist()
    grid = str([round(v, 6) for v in t]) if len(t) <= 4 else f"[{t[0]:g} .. {t[-1]:g}] ({len(t)} points)"
    if ode.how == "traced":
        info = ode.solves[ode.target]
        return (f"the {info.library} {info.entry} call at {info.where} (solve {info.index} of {len(ode.solves)}), "
                f"f = {ode.func_description} ({ode.func_class}), state {ode.layout.describe()}, t = {grid}")
    if ode.how == "attributes":
        form = ode.loop_form
        start = "" if form is None or (form.start_scale is None and form.start_dtype is None) else \
            "".join([f" x {form.start_scale:g}" if form.start_scale is not None else "",
                     f" in {form.start_dtype}" if form.start_dtype else ""])
        last = "" if form is None or form.end_at is None else f", then one Euler step to {form.end_at:g}"
        return (f"block '{ode.block_path or '(the model itself)'}' by its attributes (no solver call seen), "
                f"f = {ode.func_description} ({ode.func_class}), h(0) = the block's input {ode.layout.describe()}"
                f"{start}, t = {grid}{last}")
    return f"the model as f itself, state {ode.layout.describe()}, t = {grid}"
