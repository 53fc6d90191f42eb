"""``dise export`` as a library: check the selector against the model, rebuild the split from the
selector's record of the training input, and write the bundle."""
from __future__ import annotations

from pathlib import Path

import torch

from dise_cli.bundle import ExportInfo, check_reading, example_input, recorded_grids, write_bundle
from dise_cli.errors import InputError
from dise_cli.inputs import InputJoin
from dise_cli.loading import LoadedModel, load_model
from dise_cli.loopform import LoopForm
from dise_cli.odemodel import OdeModel
from dise_cli.pipeline import Inputs
from dise_cli.reading import read_model
from dise_cli.selector import Selector


def export_plan(ode: OdeModel, loaded: LoadedModel, x: torch.Tensor | None = None) -> dict:
    """What export will do with this model, said before any profiling: ``torch.export`` programs, or
    the ``--arch`` factory where they cannot capture the model. With ``x``, programs are tried (and
    checked against the model) now; without, only what the reading rules out is known."""
    rebuilds = loaded.rebuildable
    if ode.how == "attributes" and not ode.splittable:
        from dise_cli.programs import unsplit_reason
        programs, reason = "no", unsplit_reason(ode)
    elif x is None:
        programs, reason = "tried at export", ""
    else:
        from dise_cli.bundle import _check_programs
        from dise_cli.programs import export_programs
        found, layout, reason, mode = export_programs(ode, x)
        if found:
            reason = _check_programs(ode, found, layout, mode, x)
        programs = layout if found and not reason else "no"
    needs_arch = programs == "no" and not rebuilds
    if needs_arch:
        note = (f"export will need --arch package.module:factory, a function without arguments that builds the model: "
                f"torch.export cannot capture it ({reason})")
    elif programs == "no":
        note = f"the bundle will rebuild the model with {loaded.spec.arch} ({reason})"
    elif programs == "tried at export":
        note = "export tries torch.export programs; where they fail the bundle rebuilds the model with --arch"
    else:
        note = f"exports as torch.export programs ({'encoder, f, decoder' if programs == 'split' else 'forward and f'})"
    return {"programs": programs, "needs_arch": needs_arch, "note": note}


def export_bundle(inputs: Inputs, selector: Selector, selector_name: str, out: str | Path) -> ExportInfo:
    """Read the model as the selector's training read it (its recorded solve and state), on a batch
    shaped like the training data, and write the bundle."""
    loaded = load_model(inputs.model)
    if selector.meta.get("model_sha256") not in (None, loaded.sha256):
        raise InputError(f"selector '{selector_name}' was trained for another model (sha256 "
                         f"{str(selector.meta.get('model_sha256'))[:12]}...), not '{inputs.model.path}' "
                         f"(sha256 {loaded.sha256[:12]}...)")
    recorded = selector.meta.get("reading")
    spec = selector.meta.get("input")
    if not isinstance(recorded, dict) or not isinstance(spec, dict):
        raise InputError(f"selector '{selector_name}' does not record how the model was read; train it again")
    module = loaded.module.to(inputs.device)
    solve = inputs.solve if inputs.solve is not None else recorded.get("solve")
    grid, given = recorded_grids(recorded, inputs.t_span)

    def read(x: torch.Tensor, name: str, model: torch.nn.Module = module) -> OdeModel:
        return read_model(model, x, data_name=name, solve=solve, ode_block=inputs.ode_block, t_span=grid,
                          data_t=given, model_name=f"model '{inputs.model.path}'",
                          join=InputJoin.from_dict(recorded.get("inputs")),
                          output_key=inputs.output_key if inputs.output_key is not None else recorded.get("output_key"),
                          time_scale=recorded.get("time_scale"),
                          loop_form=LoopForm.from_dict(recorded.get("loop_form")))
    def read_as_recorded(x: torch.Tensor, name: str) -> OdeModel:
        ode = read(x, name)
        check_reading(ode.record(), recorded, f"selector '{selector_name}'")
        return ode
    keep_rows = False
    x = example_input(spec, inputs.device)
    try:
        ode = read_as_recorded(x, "noise shaped like the selector's training data")
    except InputError:
        # a model that rejects noise (integer codes, a valid range), or reads it otherwise than its data
        # (a time mode that held on the data's rows): the data rows the selector keeps
        if "rows" not in spec:       # a selector from an older dise keeps no data rows
            raise
        x, keep_rows = example_input(spec, inputs.device, rows=True), True
        ode = read_as_recorded(x, "the data rows the selector keeps")

    def rebuilt() -> OdeModel:
        """The model as the bundle will rebuild it: the factory, then the file's weights."""
        from dise_cli.imports import call_factory
        again = call_factory(inputs.model.arch, "--arch", inputs.model.code_path)
        again.load_state_dict(module.state_dict(), strict=True)
        return read(x, "the rebuilt model", again.to(inputs.device).eval())
    return write_bundle(out, ode, module.state_dict(), selector, x, arch=inputs.model.arch if loaded.rebuildable else None,
                        extra={"validation": selector.meta.get("validation", {})}, keep_rows=keep_rows,
                        rebuilt=rebuilt if loaded.rebuildable else None)


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
