"""Finding the ODE block in the models people have, and running them with dise's solver swapped in."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import tiny_models
from dise_cli.errors import InputError, UsageError
from dise_cli.integrators import Dopri5, TimeMode
from dise_cli.odeblock import find_blocks, probe, split_model

TIGHT = Dopri5(rtol=1e-7, atol=1e-7)


def opened(module: nn.Module, x: torch.Tensor, **kw):
    model = split_model(module, **kw)
    probe(model, x, "data")
    return model


def dise_outputs(model, x):
    with torch.no_grad():
        return model.forward_with(x, lambda h: TIGHT.solve(model.field, h, model.t_span).ys)


def x2(n=6, d=2):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def test_torchdiffeq_example_style_sequential():
    module = tiny_models.build_classifier()
    model = opened(module, x2())
    assert (model.kind, model.block_path, model.func_attr, model.output_format) == ("sequential", "1", "odefunc", "final")
    assert model.t_span.tolist() == [0.0, 1.0] and model.t_span_source == "attribute integration_time"
    assert model.h0_shape == (4,) and model.field.mode is TimeMode.BROADCAST
    with torch.no_grad():
        torch.testing.assert_close(dise_outputs(model, x2()), module(x2()), rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(model.encode(x2()), module[0](x2()))


def test_torchdyn_style_block_returning_t_and_trajectory():
    module = tiny_models.build_torchdyn_like()
    model = opened(module, x2())
    assert (model.block_path, model.func_attr, model.output_format) == ("1", "vf", "torchdyn")
    assert model.t_span_source == "attribute t_span"
    with torch.no_grad():
        torch.testing.assert_close(dise_outputs(model, x2()), module(x2()), rtol=2e-3, atol=2e-3)


def test_nested_block_called_from_a_custom_forward():
    module = tiny_models.build_nested()
    model = opened(module, x2())
    assert (model.kind, model.block_path) == ("nested", "body.ode")
    assert not model.splittable
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x2()), module.stem(x2()))
        torch.testing.assert_close(dise_outputs(model, x2()), module(x2()), rtol=2e-3, atol=2e-3)
    assert "forward" not in module.body["ode"].__dict__      # the swap is undone


def test_wrapper_with_other_attribute_name_returning_trajectory():
    module = tiny_models.build_wrapper()
    model = opened(module, x2())
    assert (model.kind, model.func_attr, model.output_format) == ("root", "dynamics", "trajectory")
    assert model.t_span.tolist() == [0.0, 0.5, 1.0]
    out = dise_outputs(model, x2())
    assert out.shape == (6, 3, 2)                                   # batch first
    with torch.no_grad():
        torch.testing.assert_close(out, module(x2()).transpose(0, 1), rtol=1e-4, atol=1e-5)


def test_bare_ode_function_with_data_time_grid():
    module = tiny_models.build_bare()
    grid = torch.tensor([0.0, 0.25, 1.0])
    model = opened(module, x2(), data_t=grid)
    assert (model.kind, model.t_span_source) == ("bare", "data 't'")
    out = dise_outputs(model, x2())
    from torchdiffeq import odeint
    with torch.no_grad():
        ref = odeint(module, x2(), grid, rtol=1e-7, atol=1e-7).transpose(0, 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_t_span_flag_overrides_the_model():
    model = opened(tiny_models.build_classifier(), x2(), t_span=torch.tensor([0.0, 2.0], dtype=torch.float64))
    assert model.t_span.tolist() == [0.0, 2.0] and model.t_span_source == "--t-span"


def test_ode_block_flag_and_several_blocks():
    module = tiny_models.build_two_blocks()
    assert [p for p, _ in find_blocks(module)] == ["a", "b"]
    with pytest.raises(InputError, match="several ODE blocks found .*a, b.*--ode-block"):
        split_model(module)
    model = split_model(module, ode_block="b")
    assert (model.block_path, model.kind) == ("b", "nested")
    assert split_model(module, ode_block="a.odefunc").block_path == "a"     # naming f picks its block
    with pytest.raises(UsageError, match="--ode-block: the model has no submodule 'c'"):
        split_model(module, ode_block="c")


def test_no_block():
    with pytest.raises(InputError, match="no ODE block found"):
        split_model(tiny_models.build_no_block())


def test_nested_sequential_split():
    inner = nn.Sequential(nn.Linear(4, 4), tiny_models.ODEBlock(tiny_models.MLPFunc(4)), nn.Tanh())
    module = nn.Sequential(nn.Linear(2, 4), inner, nn.Linear(4, 3))
    model = opened(module, x2())
    assert (model.kind, model.block_path) == ("sequential", "1.1")
    assert len(model.encoder) == 2 and len(model.decoder) == 2
    with torch.no_grad():
        torch.testing.assert_close(dise_outputs(model, x2()), module(x2()), rtol=2e-3, atol=2e-3)


def test_model_that_rejects_the_data():
    model = split_model(tiny_models.build_classifier())
    with pytest.raises(InputError, match="the model rejects data 'data'"):
        probe(model, torch.randn(3, 5), "data")


def test_bare_function_with_one_time_dependent_layer_is_still_bare():
    model = opened(tiny_models.build_one_layer_func(), x2())
    assert model.kind == "bare"


def test_wrapper_called_with_y0_and_t():
    module = tiny_models.WrapperWithTime()
    model = opened(module, x2(), t_span=torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert (model.kind, model.func_attr, model.output_format) == ("root", "net", "trajectory")
    out = dise_outputs(model, x2())
    with torch.no_grad():
        ref = module(x2(), torch.tensor([0.0, 0.5, 1.0])).transpose(0, 1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
