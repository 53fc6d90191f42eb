"""``dise export`` as a library: check the selector against the model, rebuild the split from the
selector's record of the training input, and write the bundle."""
from __future__ import annotations

from pathlib import Path

import torch

from dise_cli.bundle import ExportInfo, write_bundle
from dise_cli.errors import InputError
from dise_cli.loading import load_model
from dise_cli.odeblock import probe, split_model
from dise_cli.pipeline import Inputs
from dise_cli.selector import Selector


def example_input(selector: Selector, selector_name: str, device: torch.device) -> torch.Tensor:
    """A batch of zeros shaped like the data the selector was trained on."""
    spec = selector.meta.get("input")
    if not isinstance(spec, dict):
        raise InputError(f"selector '{selector_name}' does not record its input shape; train it again")
    return torch.zeros(4, *spec["shape"], dtype=getattr(torch, spec["dtype"]), device=device)


def export_bundle(inputs: Inputs, selector: Selector, selector_name: str, out: str | Path) -> ExportInfo:
    loaded = load_model(inputs.model)
    if selector.meta.get("model_sha256") not in (None, loaded.sha256):
        raise InputError(f"selector '{selector_name}' was trained for another model (sha256 "
                         f"{str(selector.meta.get('model_sha256'))[:12]}...), not '{inputs.model.path}' "
                         f"(sha256 {loaded.sha256[:12]}...)")
    module = loaded.module.to(inputs.device)
    grid = None if inputs.t_span is None else torch.tensor(inputs.t_span, dtype=torch.float64)
    ode = split_model(module, ode_block=inputs.ode_block, t_span=grid, model_name=f"model '{inputs.model.path}'")
    x = example_input(selector, selector_name, inputs.device)
    probe(ode, x, "the selector's recorded input")
    if [float(v) for v in ode.t_span] != [float(v) for v in selector.meta.get("t_span", ode.t_span.tolist())]:
        raise InputError(f"selector '{selector_name}' was trained on t = {selector.meta.get('t_span')}, "
                         f"but the model's time grid is {ode.t_span.tolist()}; pass the same --t-span")
    return write_bundle(out, ode, module.state_dict(), selector, x, arch=inputs.model.arch,
                        extra={"validation": selector.meta.get("validation", {})})


def check_selector_profile(selector: Selector, selector_name: str, profile_path: str) -> None:
    """A selector and a profile belong together: same candidates in the same order, same file."""
    from dise_cli.files import sha256_file
    from dise_cli.profiles import read_profile
    profile = read_profile(profile_path)
    if profile.candidates != selector.candidates:
        raise InputError(f"selector '{selector_name}' chooses among {','.join(selector.candidates)} but profile "
                         f"'{profile_path}' holds {','.join(profile.candidates)}; train the selector on this profile")
    recorded = selector.meta.get("profile_sha256")
    if recorded and recorded != sha256_file(profile_path):
        raise InputError(f"selector '{selector_name}' was trained on another profile than '{profile_path}' "
                         f"(sha256 {recorded[:12]}...)")
