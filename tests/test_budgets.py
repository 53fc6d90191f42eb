"""Error budgets against hand-computed profiles: a routing that just meets a budget is kept, one that
just misses is not; the cost labels and β follow the budget; evaluate's gates use the same rule."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dise_cli.budgets import Budgets
from dise_cli.calibration import calibrate
from dise_cli.costs import cost_labels
from dise_cli.errors import UsageError
from dise_cli.evaluation import Gates, check_gates, evaluate_routed
from dise_cli.profiles import Profile

# Four samples; euler (1 NFE), rk4 (4), dopri5 (20, the baseline). The baseline's Γ is 1 everywhere.
# All-euler: mean Γ 1.1 (+10 %), mean deviation 0.25. Euler on samples 0, 1 and rk4 on 2, 3: Γ 1.0,
# deviation 0.05, mean NFE 2.5.
GAMMA = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.2, 1.0, 1.0], [1.2, 1.0, 1.0]], dtype=torch.float64)
DEVIATION = torch.tensor([[0.0, 0.1, 0.0], [0.0, 0.1, 0.0], [0.5, 0.1, 0.0], [0.5, 0.1, 0.0]], dtype=torch.float64)
NFE = torch.tensor([[1, 4, 20]] * 4, dtype=torch.int32)
PRED = torch.tensor([[0.0, 2.0, 10.0], [0.0, 2.0, 10.0], [3.0, 2.0, 10.0], [3.0, 2.0, 10.0]], dtype=torch.float64)


def _profile() -> Profile:
    return Profile(candidates=["euler:steps=1", "rk4:steps=1", "dopri5"], baseline=2, task="regression",
                   t_span=[0.0, 1.0], index=torch.arange(4), nfe=NFE, status=torch.zeros(4, 3, dtype=torch.uint8),
                   gamma=GAMMA, deviation=DEVIATION)


def _chosen_nfe(budgets: Budgets) -> float:
    right = torch.ones(4, 3, dtype=torch.bool)
    chosen, _ = calibrate(PRED, right, NFE, baseline=2, selector_nfe=0.0, max_drop_pp=0.0, gamma=GAMMA,
                          deviation=DEVIATION, budgets=budgets)
    return chosen.nfe


@pytest.mark.parametrize("budgets, nfe", [
    (Budgets(max_error_increase=10.0), 1.0),        # all-euler is exactly +10 %: kept
    (Budgets(max_error_increase=9.99), 2.5),        # just missed: euler where it is exact, rk4 elsewhere
    (Budgets(max_deviation=0.25), 1.0),
    (Budgets(max_deviation=0.2499), 2.5),
    (Budgets(max_error_increase=10.0, max_deviation=0.2499), 2.5),      # every budget given must hold
    (Budgets(max_error_increase=0.0, max_deviation=0.04), 10.5),        # euler where exact, dopri5 elsewhere
])
def test_calibration_keeps_the_cheapest_routing_within_the_budgets(budgets, nfe):
    assert _chosen_nfe(budgets) == pytest.approx(nfe)


def test_cost_labels_and_beta_follow_the_budget():
    labels = cost_labels(_profile(), alpha=1.0, M=1000.0, budgets=Budgets(max_error_increase=25.0))
    assert labels.beta == pytest.approx(1.25)
    assert labels.right.tolist() == [[True] * 3] * 4                   # a sample's Γ of 1.2 is within 1.25...
    strict = cost_labels(_profile(), alpha=1.0, M=1000.0, budgets=Budgets(max_error_increase=10.0))
    assert strict.beta == pytest.approx(1.1)
    assert strict.right[:, 0].tolist() == [True, True, False, False]  # ...but not within 1.1
    close = cost_labels(_profile(), alpha=1.0, M=1000.0, budgets=Budgets(max_deviation=0.1))
    assert close.right.tolist() == [[True, True, True]] * 2 + [[False, True, True]] * 2


def test_evaluate_gates_use_the_same_rule():
    report = {"task": "regression", "dise": {"nfe_mean": 1.0, "mean_error": 1.1, "mean_deviation": 0.25},
              "baseline_only": {"nfe_mean": 20.0, "mean_error": 1.0}}
    met = check_gates(report, Gates(max_error_increase=10.0, max_deviation=0.25))
    assert [g["passed"] for g in met] == [True, True]
    missed = check_gates(report, Gates(max_error_increase=9.99, max_deviation=0.2499))
    assert [g["passed"] for g in missed] == [False, False]
    assert check_gates({**report, "baseline_only": {"nfe_mean": 20.0, "mean_error": None}},
                       Gates(max_error_increase=10.0))[0]["passed"] is False      # no baseline error: not met


def test_budget_gates_on_a_classifier_are_refused_before_any_work():
    """The task comes from the selector, so the refusal needs no data run: nothing else is touched."""
    routed = SimpleNamespace(ode=None, selector=SimpleNamespace(meta={"task": "classification"}))
    with pytest.raises(UsageError, match="classifier has --max-accuracy-drop"):
        evaluate_routed(routed, data=None, rows=None, batch_size=1, batch_sizes=[1], device=None,
                        gates=Gates(max_deviation=1.0))


def test_budgets_must_not_be_negative():
    with pytest.raises(UsageError, match="--max-error-increase"):
        Budgets(max_error_increase=-1.0).check()


def test_the_training_report_judges_every_row_by_gamma_within_beta():
    """Under --max-deviation the cost labels count a routing right where it stays within the budget,
    but the report's rows (DISE, the baseline, the best single) all read Γ ≤ β: a routing that sends
    every sample to the baseline reads exactly as the baseline does."""
    from dise_cli.costs import success
    from dise_cli.selector_training import _Describer
    profile = _profile()
    profile.gamma = GAMMA.clone()
    profile.gamma[:, 2] = torch.tensor([0.5, 1.5, 1.0, 1.0])          # the baseline's own Γ: β = 1, one sample above
    labels = cost_labels(profile, 0.3, 1000.0, None, budgets=Budgets(max_deviation=0.2))
    assert bool(labels.right[:, 2].all())                              # no deviation from itself: right by the budget
    describe = _Describer(profile, PRED, 0.0, labels.beta)
    everything_to_baseline = describe((100.0, 100.0, 0.0))
    assert everything_to_baseline["accuracy"] == pytest.approx(0.75)     # as the baseline's row reads: Γ ≤ β on 3 of 4
    assert float(success(profile, labels.beta)[:, 2].double().mean()) == pytest.approx(0.75)
