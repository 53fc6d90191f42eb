"""Cost labels (paper Eq. 4 and 5) as pure functions of a profile and α, M, β.

classification: c = NFE^α if the answer is right, else M^α;
other tasks:    c = (NFE·Γ)^α if Γ ≤ β, else M^α   (β defaults to the baseline's mean Γ).
A failed solve (max_steps, non-finite, underflow) is never right. A wrong answer must cost more
than any right one, so M is raised to ten times the largest right-answer base (NFE, or NFE·Γ)
when the given M is not at least that; the result says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dise_cli.errors import UsageError
from dise_cli.profiles import Profile
from dise_cli.reports import default_beta, success

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


def cost_labels(profile: Profile, alpha: float = DEFAULT_ALPHA, M: float = DEFAULT_M,
                beta: float | None = None) -> CostLabels:
    """``[N, K]`` costs for every profiled sample and candidate."""
    if not alpha > 0:
        raise UsageError(f"--alpha: must be > 0, got {alpha}")
    if not M > 0:
        raise UsageError(f"--M: must be > 0, got {M}")
    if beta is not None and not beta >= 0:
        raise UsageError(f"--beta: must be >= 0, got {beta}")
    regression = profile.task == "regression"
    if regression and beta is None:
        beta = default_beta(profile)
    right = success(profile, beta)
    nfe = profile.nfe.to(torch.float64)
    base = nfe * profile.gamma.to(torch.float64).clamp(min=0) if regression else nfe
    largest = float(base[right].max()) if bool(right.any()) else 0.0
    M_used = float(M)
    if M_used < M_HEADROOM * largest:
        M_used = M_HEADROOM * largest
    wrong_cost = M_used ** alpha
    costs = torch.where(right, base.clamp(min=0) ** alpha, torch.full_like(base, wrong_cost))
    return CostLabels(costs=costs, right=right, alpha=float(alpha), M=M_used, M_raised=M_used != float(M),
                      beta=beta if regression else None)
