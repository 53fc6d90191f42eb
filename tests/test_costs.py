"""Cost labels (paper Eq. 4 and 5) against small hand-computed tables."""
from __future__ import annotations

import pytest
import torch

from dise_cli.costs import cost_labels
from dise_cli.errors import UsageError
from dise_cli.profiles import Profile

CANDS = ["euler:steps=1", "rk4:steps=1", "dopri5:rtol=0.001,atol=0.001"]


def classification(nfe, correct, status=None) -> Profile:
    nfe = torch.tensor(nfe, dtype=torch.int32)
    return Profile(candidates=CANDS[:nfe.shape[1]], baseline=nfe.shape[1] - 1, task="classification",
                   t_span=[0.0, 1.0], index=torch.arange(len(nfe)), nfe=nfe,
                   status=torch.zeros_like(nfe, dtype=torch.uint8) if status is None else torch.tensor(status, dtype=torch.uint8),
                   correct=torch.tensor(correct, dtype=torch.bool), pred=torch.zeros_like(nfe, dtype=torch.int64))


def test_eq4_by_hand():
    p = classification([[1, 4, 26], [1, 4, 32]], [[1, 1, 1], [0, 1, 1]])
    labels = cost_labels(p, alpha=0.5, M=400.0)
    expected = torch.tensor([[1.0, 2.0, 26 ** 0.5], [20.0, 2.0, 32 ** 0.5]], dtype=torch.float64)
    torch.testing.assert_close(labels.costs, expected)
    assert not labels.M_raised and labels.M == 400.0 and labels.beta is None


def test_defaults_are_the_papers():
    labels = cost_labels(classification([[1, 26]], [[0, 1]]))
    assert labels.alpha == 0.3 and labels.M == 1000.0
    assert labels.costs[0, 0].item() == pytest.approx(1000 ** 0.3)


def test_failed_solves_cost_M_even_if_the_argmax_happened_to_be_right():
    p = classification([[1, 26]], [[1, 1]], status=[[0, 1]])        # dopri5 hit max_steps
    assert cost_labels(p, alpha=1.0, M=100.0).costs.tolist() == [[1.0, 100.0]]


def test_M_is_raised_above_the_largest_nfe():
    p = classification([[1, 4, 600]], [[0, 1, 1]])
    labels = cost_labels(p, alpha=1.0, M=1000.0)
    assert labels.M_raised and labels.M == 6000.0
    assert labels.costs[0, 0] > labels.costs[0, 2]                   # wrong still costs more than right


def test_eq5_regression_with_default_beta():
    gamma = torch.tensor([[0.5, 0.01, 0.02], [0.3, 0.5, 0.04]], dtype=torch.float64)
    p = Profile(candidates=CANDS, baseline=2, task="regression", t_span=[0.0, 1.0], index=torch.arange(2),
                nfe=torch.tensor([[1, 4, 20], [1, 4, 30]], dtype=torch.int32),
                status=torch.zeros(2, 3, dtype=torch.uint8), gamma=gamma, deviation=torch.zeros(2, 3))
    labels = cost_labels(p, alpha=1.0, M=10.0)                         # beta = mean(0.02, 0.04) = 0.03
    assert labels.beta == pytest.approx(0.03)
    # row 2: no candidate within β; each costs M times its Γ over the least one's (0.04, capped at 10)
    expected = torch.tensor([[10.0, 4 * 0.01, 20 * 0.02], [10.0 * 0.3 / 0.04, 10.0 * 10, 10.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(labels.costs, expected)
    assert cost_labels(p, alpha=1.0, M=10.0, beta=0.05).costs[1, 2].item() == pytest.approx(30 * 0.04)


def test_a_sample_no_candidate_gets_right_is_labelled_for_its_least_wrong_one():
    """All Γ > β: the paper's labels would all be M^α; ranked, the least wrong costs M^α, a failed solve
    ten times M, others M times their Γ over the least one's (capped at ten times)."""
    gamma = torch.tensor([[0.01, 0.01, 0.01], [9.0, float("nan"), 0.05]], dtype=torch.float64)
    p = Profile(candidates=CANDS, baseline=2, task="regression", t_span=[0.0, 1.0], index=torch.arange(2),
                nfe=torch.tensor([[1, 4, 20], [1, 4, 20]], dtype=torch.int32),
                status=torch.tensor([[0, 0, 0], [0, 2, 0]], dtype=torch.uint8), gamma=gamma,
                deviation=torch.zeros(2, 3))
    labels = cost_labels(p, alpha=1.0, M=100.0, beta=0.02)
    assert labels.costs[1].tolist() == [1000.0, 1000.0, 100.0] and labels.costs[1].argmin() == 2
    assert labels.costs[0].tolist() == [0.01, 0.04, pytest.approx(0.2)]     # rows with a right one: the paper's


def test_any_number_of_candidates():
    p = classification([[1, 26]], [[1, 1]])
    assert cost_labels(p).costs.shape == (1, 2)


@pytest.mark.parametrize("kw,flag", [({"alpha": 0}, "--alpha"), ({"M": -1}, "--M"), ({"beta": -0.1}, "--beta")])
def test_bad_settings(kw, flag):
    with pytest.raises(UsageError, match=flag):
        cost_labels(classification([[1, 26]], [[1, 1]]), **kw)


def test_training_notes_a_routed_error_far_above_the_baselines_without_a_budget():
    from dise_cli.render import error_note
    report = {"task": "regression", "budgets": {"max_error_increase_pct": None, "max_deviation": None},
              "max_accuracy_drop_pp": 0.3, "dise": {"mean_error": 0.11},
              "baseline_only": {"candidate": "heun2:steps=9", "mean_error": 0.0164}}
    note = error_note(report)
    assert note is not None and "6.71 times heun2:steps=9's" in note and "--max-error-increase" in note
    assert error_note({**report, "dise": {"mean_error": 0.02}}) is None                 # within 2x
    assert error_note({**report, "budgets": {"max_error_increase_pct": 50.0}}) is None  # a budget was given
    assert error_note({**report, "task": "classification"}) is None
