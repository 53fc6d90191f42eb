"""Cost labels (paper Eq. 4 and 5) as pure functions of a profile and α, M, β.

classification: c = Δ^α if the answer is right, else M^α;
other tasks:    c = (Δ·Γ)^α if Γ ≤ β, else M^α   (β defaults to the baseline's mean Γ).

Δ is the paper's NFE (``cost="nfe"``), or the sample's solve time (``cost="seconds"``): its NFE times
the candidate's measured seconds per NFE on the profiling device, in units of the baseline's
seconds per NFE, so that both costs live on the same scale (a baseline sample costs the same in
either) and M means the same. Time is the truer cost where candidates' steps carry different
overhead per evaluation (step control, dense output on a long grid).
A failed solve (max_steps, non-finite, underflow) is never right. A wrong answer must cost more
than any right one, so M is raised to ten times the largest right-answer base (NFE, or NFE·Γ)
when the given M is not at least that; the result says so.

Where no candidate is right for a sample (Γ > β for all: a sample even the baseline solves worse than
its mean), the paper's labels are all M^α and teach the selector nothing, so it may send the sample
to the cheapest, farthest-off candidate (an EDM sampler's one-step RK4, 250 times the baseline's mean
error). There each wrong candidate costs (M · Γ / Γ_least)^α instead: the least wrong costs M^α, the
others more, a failed solve M_HEADROOM times more: the selector learns to keep such samples on the
most accurate candidate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dise_cli.budgets import Budgets
from dise_cli.errors import UsageError
from dise_cli.profiles import Profile
from dise_cli.reports import default_beta, estimated_seconds, success

COSTS = ("nfe", "seconds")
DEFAULT_ALPHA = 0.3
DEFAULT_M = 1000.0
M_HEADROOM = 10.0     # M must be at least this many times the largest right-answer base


@dataclass(frozen=True)
class CostLabels:
    costs: torch.Tensor        # [N, K] float64
    right: torch.Tensor        # [N, K] bool: the cases that got NFE^α (or (NFE·Γ)^α)
    alpha: float
    M: float                   # the M used
    M_raised: bool             # True if the given M was too small and was raised
    beta: float | None         # the β used (regression), else None
    delta: torch.Tensor        # [N, K] float64: Δ, the cost of each solve (NFE, or time in baseline NFE)
    cost: str = "nfe"


def cost_labels(profile: Profile, alpha: float = DEFAULT_ALPHA, M: float = DEFAULT_M,
                beta: float | None = None, cost: str = "nfe", budgets: Budgets | None = None) -> CostLabels:
    """``[N, K]`` costs for every profiled sample and candidate."""
    if not alpha > 0:
        raise UsageError(f"--alpha: must be > 0, got {alpha}")
    if not M > 0:
        raise UsageError(f"--M: must be > 0, got {M}")
    if beta is not None and not beta >= 0:
        raise UsageError(f"--beta: must be >= 0, got {beta}")
    regression = profile.task == "regression"
    budgeted = regression and beta is None and budgets is not None and budgets.given
    right = success(profile, beta, budgets if budgeted else None)
    if regression and beta is None:
        beta = default_beta(profile)
        if budgeted and budgets.max_error_increase is not None:
            beta = budgets.error_limit(beta)            # β follows the error budget
    delta = solve_cost(profile, cost)
    base = delta * profile.gamma.to(torch.float64).clamp(min=0) if regression else delta
    largest = float(base[right].max()) if bool(right.any()) else 0.0
    M_used = float(M)
    if M_used < M_HEADROOM * largest:
        M_used = M_HEADROOM * largest
    wrong_cost = M_used ** alpha
    costs = torch.where(right, base.clamp(min=0) ** alpha, torch.full_like(base, wrong_cost))
    if regression:
        costs = _rank_hopeless(costs, right, profile.gamma.to(torch.float64), profile.status != 0, M_used, alpha)
    return CostLabels(costs=costs, right=right, alpha=float(alpha), M=M_used, M_raised=M_used != float(M),
                      beta=beta if regression else None, delta=delta, cost=cost)


def _rank_hopeless(costs: torch.Tensor, right: torch.Tensor, gamma: torch.Tensor, failed: torch.Tensor,
                   M: float, alpha: float) -> torch.Tensor:
    """Rows where no candidate is right: (M · Γ / Γ_least)^α, failed solves M_HEADROOM · M (see above)."""
    hopeless = ~right.any(1)
    if not bool(hopeless.any()):
        return costs
    g = torch.where(failed | ~torch.isfinite(gamma), torch.full_like(gamma, float("inf")), gamma.clamp(min=0))
    least = g.min(1, keepdim=True).values
    ratio = torch.where(least > 0, g / least, torch.where(g > 0, torch.full_like(g, M_HEADROOM), torch.ones_like(g)))
    ratio = torch.nan_to_num(ratio, nan=M_HEADROOM, posinf=M_HEADROOM).clamp(min=1.0, max=M_HEADROOM)
    ranked = (M * ratio) ** alpha
    return torch.where(hopeless[:, None], ranked, costs)


def solve_cost(profile: Profile, cost: str = "nfe") -> torch.Tensor:
    """``[N, K]`` Δ: NFE, or the estimated solve time in units of the baseline's seconds per NFE."""
    if cost not in COSTS:
        raise UsageError(f"--cost: unknown cost '{cost}'; valid: {', '.join(COSTS)}")
    nfe = profile.nfe.to(torch.float64)
    if cost == "nfe":
        return nfe
    seconds = estimated_seconds(profile)
    if seconds is None:
        raise UsageError("--cost seconds: the profile has no timings (it was made by an older dise); "
                         "profile again, or use --cost nfe")
    unit = float(profile.timing["seconds_per_nfe"][profile.baseline])
    if not unit > 0:
        raise UsageError("--cost seconds: the profile's baseline has no measured time per NFE; use --cost nfe")
    return seconds / unit
