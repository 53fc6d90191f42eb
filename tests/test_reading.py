"""Reading a model by its solve: the solver call dise watches, the split around it, and running the
model with dise's solver in place of its own."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import tiny_models
from dise_cli.errors import InputError, UsageError
from dise_cli.integrators import Dopri5, TimeMode
from dise_cli.odeblock import find_blocks
from dise_cli.reading import read_model

TIGHT = Dopri5(rtol=1e-7, atol=1e-7)


def dise_outputs(model, x):
    with torch.no_grad():
        return model.forward_with(x, lambda p: TIGHT.solve(p.field, p.h0, p.t).ys)


def x2(n=6, d=2):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def test_torchdiffeq_example_style_sequential():
    module = tiny_models.build_classifier()
    model = read_model(module, x2())
    assert (model.how, model.kind, model.block_path, model.func_description) == ("traced", "sequential", "1",
                                                                                 "1.odefunc")
    assert model.extraction == "final" and model.t_span.tolist() == [0.0, 1.0]
    assert model.t_span_source == "the model's solver call"
    assert model.h0_shape == (4,) and model.field.mode is TimeMode.BROADCAST
    assert (model.own.method, model.own.rtol, model.own.atol) == ("dopri5", 1e-3, 1e-3)
    with torch.no_grad():
        torch.testing.assert_close(dise_outputs(model, x2()), module(x2()), rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(model.encode(x2()).h0, module[0](x2()))


def test_torchdyn_style_block_returning_t_and_trajectory():
    module = tiny_models.build_torchdyn_like()
    model = read_model(module, x2())
    assert (model.how, model.block_path, model.func_description) == ("traced", "1", "1.vf")
    assert model.kind == "whole"        # it returns its own t beside the trajectory: the forward runs whole
    with torch.no_grad():
        torch.testing.assert_close(dise_outputs(model, x2()), module(x2()), rtol=2e-3, atol=2e-3)


def test_nested_block_called_from_a_custom_forward():
    module = tiny_models.build_nested()
    model = read_model(module, x2())
    assert (model.kind, model.block_path) == ("whole", "body.ode")
    assert not model.splittable
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x2()).h0, module.stem(x2()))
        torch.testing.assert_close(dise_outputs(model, x2()), module(x2()), rtol=2e-3, atol=2e-3)
    assert "forward" not in module.body["ode"].__dict__      # nothing of the user's is changed


def test_wrapper_with_other_attribute_name_returning_trajectory():
    module = tiny_models.build_wrapper()
    model = read_model(module, x2())
    assert (model.kind, model.func_description, model.extraction) == ("root", "dynamics", "returned")
    assert model.t_span.tolist() == [0.0, 0.5, 1.0]
    out = dise_outputs(model, x2())
    assert out.shape == (6, 3, 2)                                   # batch first
    with torch.no_grad():
        torch.testing.assert_close(out, module(x2()).transpose(0, 1), rtol=1e-4, atol=1e-5)


def test_bare_ode_function_with_data_time_grid():
    module = tiny_models.build_bare()
    grid = torch.tensor([0.0, 0.25, 1.0])
    model = read_model(module, x2(), data_t=grid)
    assert (model.kind, model.t_span_source) == ("bare", "data 't'")
    out = dise_outputs(model, x2())
    from torchdiffeq import odeint
    with torch.no_grad():
        ref = odeint(module, x2(), grid, rtol=1e-7, atol=1e-7).transpose(0, 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_t_span_flag_is_for_models_whose_grid_dise_cannot_see():
    model = read_model(tiny_models.build_bare(), x2(), t_span=torch.tensor([0.0, 2.0], dtype=torch.float64))
    assert model.t_span.tolist() == [0.0, 2.0] and model.t_span_source == "--t-span"
    with pytest.raises(UsageError, match="--t-span: .* passes its own time grid"):
        read_model(tiny_models.build_classifier(), x2(), t_span=torch.tensor([0.0, 2.0], dtype=torch.float64))


def test_several_solves_solve_and_ode_block_flags():
    module = tiny_models.build_two_blocks()
    assert [p for p, _ in find_blocks(module)] == ["a", "b"]
    model = read_model(module, x2())
    assert len(model.solves) == 2 and [s.block for s in model.solves] == ["a", "b"]
    costliest = max(range(2), key=lambda k: (model.solves[k].nfe, -k))
    assert model.target == costliest
    assert read_model(module, x2(), solve=1).block_path == "b"
    assert read_model(module, x2(), ode_block="b").block_path == "b"
    assert read_model(module, x2(), ode_block="a.odefunc").block_path == "a"     # naming f picks its solve
    with pytest.raises(UsageError, match="--ode-block: no solve of model is made from 'c'"):
        read_model(module, x2(), ode_block="c")
    with pytest.raises(UsageError, match="--solve: .* 2 solver call"):
        read_model(module, x2(), solve=2)
    with torch.no_grad():                                   # the other solve runs as written
        torch.testing.assert_close(dise_outputs(read_model(module, x2(), solve=1), x2()), module(x2()),
                                   rtol=1e-3, atol=1e-3)


def test_no_block():
    with pytest.raises(InputError, match="no ODE block found"):
        read_model(tiny_models.build_no_block(), x2())


def test_nested_sequential_split():
    inner = nn.Sequential(nn.Linear(4, 4), tiny_models.ODEBlock(tiny_models.MLPFunc(4)), nn.Tanh())
    module = nn.Sequential(nn.Linear(2, 4), inner, nn.Linear(4, 3))
    model = read_model(module, x2())
    assert (model.kind, model.block_path) == ("sequential", "1.1")
    assert len(model.encoder) == 2 and len(model.decoder) == 2
    with torch.no_grad():
        torch.testing.assert_close(dise_outputs(model, x2()), module(x2()), rtol=2e-3, atol=2e-3)


def test_model_that_rejects_the_data():
    with pytest.raises(InputError, match="the model rejects data 'data'"):
        read_model(tiny_models.build_classifier(), torch.randn(3, 5))


def test_bare_function_with_one_time_dependent_layer_is_still_bare():
    assert read_model(tiny_models.build_one_layer_func(), x2()).kind == "bare"


def test_wrapper_called_with_y0_and_t():
    module = tiny_models.WrapperWithTime()
    grid = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    model = read_model(module, x2(), t_span=grid)
    assert (model.kind, model.func_description) == ("whole", "net")
    assert model.model_takes_grid and model.t_span.tolist() == [0.0, 0.5, 1.0]
    out = dise_outputs(model, x2())
    with torch.no_grad():
        ref = module(x2(), torch.tensor([0.0, 0.5, 1.0])).transpose(0, 1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
