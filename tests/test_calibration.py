"""Offset calibration against a small hand-made table."""
from __future__ import annotations

import torch

from dise_cli.calibration import calibrate, evaluate_point, pareto, Point


def table():
    # 4 samples, candidates euler (NFE 1), rk4 (4), dopri5 (26). euler is wrong on sample 3 only.
    right = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    nfe = torch.tensor([[1, 4, 26]] * 4)
    # The selector is unsure about sample 3 (euler predicted a little dearer there).
    pred = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.1, 2.0, 3.0], [1.6, 2.0, 3.0]], dtype=torch.float64)
    return pred, right, nfe


def test_evaluate_point_by_hand():
    pred, right, nfe = table()
    p = evaluate_point(pred, right, nfe, torch.zeros(3, dtype=torch.float64), selector_nfe=0.5)
    assert p.accuracy == 0.75 and p.nfe == 1.0 + 0.5 and p.share == (1.0, 0.0, 0.0)


def test_calibration_finds_the_cheapest_point_within_the_drop():
    pred, right, nfe = table()
    chosen, curve = calibrate(pred, right, nfe, baseline=2, selector_nfe=0.0, max_drop_pp=0.3)
    assert chosen.accuracy == 1.0
    assert chosen.nfe == (1 + 1 + 1 + 4) / 4                  # only sample 3 goes to rk4
    assert chosen.share[0] == 0.75 and chosen.share[1] == 0.25
    allowed, _ = calibrate(pred, right, nfe, baseline=2, selector_nfe=0.0, max_drop_pp=25.0)
    assert allowed.nfe == 1.0 and allowed.accuracy == 0.75    # a 25-point drop allows all-euler
    assert [p.nfe for p in curve] == sorted(p.nfe for p in curve)


def test_pareto_keeps_only_improving_points():
    pts = [Point((0,), 0.9, 1.0, (1,)), Point((0,), 0.8, 2.0, (1,)), Point((0,), 0.95, 3.0, (1,))]
    assert [p.accuracy for p in pareto(pts)] == [0.9, 0.95]
