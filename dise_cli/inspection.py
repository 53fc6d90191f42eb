"""What ``dise inspect`` reports: the detected block, the time grid, h(0), parameters, f's cost."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from dise_cli.odeblock import OdeModel


def _params(module: nn.Module | None, exclude: set[int] = frozenset()) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if id(p) not in exclude)


def describe_model(model: OdeModel, h0: torch.Tensor | None, repeats: int = 10) -> dict:
    """A dict with stable keys; ``h0`` (a batch of initial states) enables the shape and cost figures."""
    func = model.func
    f_ids = {id(p) for p in func.parameters()}
    if model.kind == "sequential":
        encoder, decoder = _params(model.encoder), _params(model.decoder)
        rest = None
    elif model.kind in ("root", "bare"):
        encoder = decoder = 0
        rest = _params(model.module, f_ids) if model.kind == "root" else 0
    else:
        encoder = decoder = None
        rest = _params(model.module, f_ids)
    info = {
        "schema_version": 1,
        "kind": model.kind,
        "ode_block": model.block_path or "(the model itself)",
        "ode_function": (f"{model.block_path}.{model.func_attr}".lstrip(".") if model.kind != "bare"
                         else "(the model itself)"),
        "ode_function_class": type(func).__name__,
        "block_returns": model.output_format,
        "t_span": [float(v) for v in model.t_span],
        "t_span_source": model.t_span_source,
        "time_mode": model.field.mode.value if model.field is not None else None,
        "h0_shape": list(model.h0_shape) if model.h0_shape else None,
        "parameters": {"encoder": encoder, "ode_function": _params(func), "decoder": decoder,
                       "encoder_and_decoder": rest},
        "f_call": None,
    }
    if h0 is not None:
        info["f_call"] = _f_cost(model, h0, repeats)
    return info


@torch.no_grad()
def _f_cost(model: OdeModel, h0: torch.Tensor, repeats: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode
    t = model.t_span[0].to(h0.device, h0.dtype)
    field = model.field
    counter = FlopCounterMode(display=False)
    with counter:
        field(t, h0)
    times = []
    for _ in range(repeats + 1):
        if h0.device.type == "cuda":
            torch.cuda.synchronize(h0.device)
        began = time.perf_counter()
        field(t, h0)
        if h0.device.type == "cuda":
            torch.cuda.synchronize(h0.device)
        times.append(time.perf_counter() - began)
    median = statistics.median(times[1:])
    return {"batch": len(h0), "flops_per_sample": counter.get_total_flops() // max(len(h0), 1),
            "seconds_per_call": median, "seconds_per_sample": median / len(h0)}
