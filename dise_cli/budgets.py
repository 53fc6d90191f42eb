"""Error budgets for tasks without a right answer (regression, density, sampling), beyond the
paper: how much worse than the baseline a routing may be, in two currencies.

- ``max_error_increase`` (percent): the routed mean error Γ (against the labels, or against dise's
  reference solve where there are none) may exceed the baseline's mean Γ by at most this share.
  Use it when the reference (or the labels) is what you care about: the baseline itself is off by
  its mean Γ, and a candidate that is off by a little more is as good for your purpose.
- ``max_deviation`` (the metric's units): the routed outputs' mean distance from the baseline's own
  outputs may be at most this. Use it when the baseline's answers are the ones you ship today and a
  routed model must stay close to them, whatever the reference says.

Calibration keeps the cheapest routing within every budget given; the cost labels (paper Eq. 5)
count a sample as right when it is within the per-sample form of the budgets (Γ at most the
budgeted mean, deviation at most D), so that cheap candidates within them are used.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dise_cli.errors import UsageError

TOLERANCE = 1e-12      # a routing that meets a budget exactly is within it


@dataclass(frozen=True)
class Budgets:
    max_error_increase: float | None = None     # percent over the baseline's mean Γ
    max_deviation: float | None = None          # mean distance from the baseline's outputs

    def check(self) -> None:
        if self.max_error_increase is not None and not self.max_error_increase >= 0:
            raise UsageError(f"--max-error-increase: must be >= 0 (percent), got {self.max_error_increase}")
        if self.max_deviation is not None and not self.max_deviation >= 0:
            raise UsageError(f"--max-deviation: must be >= 0, got {self.max_deviation}")

    @property
    def given(self) -> bool:
        return self.max_error_increase is not None or self.max_deviation is not None

    def error_limit(self, baseline_error: float) -> float | None:
        """The largest routed mean Γ allowed, or None without an error budget."""
        if self.max_error_increase is None:
            return None
        return baseline_error * (1 + self.max_error_increase / 100)

    def error_within(self, error: float | None, baseline_error: float) -> bool:
        """Whether a routed mean Γ ``error`` keeps the error budget (True without one)."""
        limit = self.error_limit(baseline_error)
        return limit is None or (error is not None and _at_most(error, limit))

    def deviation_within(self, deviation: float | None) -> bool:
        """Whether a routed mean deviation keeps the deviation budget (True without one)."""
        return self.max_deviation is None or (deviation is not None and _at_most(deviation, self.max_deviation))

    def within(self, error: float, deviation: float, baseline_error: float) -> bool:
        """Whether a routing with mean Γ ``error`` and mean deviation ``deviation`` keeps every budget."""
        return self.error_within(error, baseline_error) and self.deviation_within(deviation)

    def right(self, gamma: torch.Tensor, deviation: torch.Tensor, baseline_error: float) -> torch.Tensor:
        """``[N, K]`` bool for the cost labels: each sample within the per-sample form of the budgets."""
        ok = torch.isfinite(gamma)
        limit = self.error_limit(baseline_error)
        if limit is not None:
            ok &= gamma <= limit
        if self.max_deviation is not None:
            ok &= deviation <= self.max_deviation
        return ok


def _at_most(value: float, limit: float) -> bool:
    return value <= limit * (1 + TOLERANCE) + TOLERANCE
