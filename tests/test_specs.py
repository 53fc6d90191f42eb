"""Candidate specs: parsing, canonical text, and errors that list the valid choices."""
from __future__ import annotations

import pytest

from dise_cli.errors import UsageError
from dise_cli.integrators import RK4, Dopri5, Euler, format_candidates, parse_candidates


def test_default_style_spec():
    cands = parse_candidates("euler:steps=1,rk4:steps=1,dopri5:rtol=1e-3,atol=1e-4")
    assert [type(c) for c in cands] == [Euler, RK4, Dopri5]
    assert cands[2].rtol == 1e-3 and cands[2].atol == 1e-4
    assert format_candidates(cands) == "euler:steps=1,rk4:steps=1,dopri5:rtol=0.001,atol=0.0001"
    assert format_candidates(parse_candidates(format_candidates(cands))) == format_candidates(cands)


def test_bare_methods_and_semicolons():
    cands = parse_candidates("euler; euler:steps=4 ;midpoint,dopri5")
    assert [c.spec for c in cands] == ["euler:steps=1", "euler:steps=4", "midpoint:steps=1", "dopri5:rtol=0.001,atol=0.001"]


@pytest.mark.parametrize("text,needle", [
    ("heun:steps=1", "valid methods: euler, midpoint, heun2, heun3, rk4, rk4_classic, dopri5"),
    ("rk4:stepz=1", "valid options: steps"),
    ("dopri5:rtol=1e-3,tol=1", "valid options: rtol, atol, max_steps, first_step"),
    ("euler:steps=0", "steps must be >= 1"),
    ("euler:steps=-2", "steps must be >= 1"),
    ("dopri5:rtol=0", "rtol and atol must be > 0"),
    ("dopri5:rtol=abc", "not a valid tolerance (a number, or one per element"),
    ("rtol=1e-3", "comes before any method"),
    ("", "no candidates"),
    ("rk4:steps", "needs option=value"),
])
def test_invalid_specs(text, needle):
    with pytest.raises(UsageError, match="--candidates") as err:
        parse_candidates(text)
    assert needle in str(err.value)
