"""The ``.dise`` bundle: one zip holding everything that runs the routed model.

Members: ``manifest.yaml`` (format version, dise version, candidates, how the model was read, task,
selector, metrics measured at export, the sha256 of every other member, and ``made_with``: versions
and device of the export, a record that loading never checks), ``model.safetensors``
(the model's state dict), ``selector.safetensors``, and, where ``torch.export`` captures the model
(``dise_cli.programs``), its programs so that the bundle runs without the user's code: ``encoder``,
``ode_function`` and ``decoder`` (.pt2), or ``model`` and ``ode_function`` for a forward that runs its
solve itself. Otherwise the manifest names the ``--arch`` factory that rebuilds the model. No
pickle: ``torch.export`` writes its sample inputs as a pickle, so dise writes that member empty, and
refuses a bundle whose programs carry one.
"""
from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from dise_cli import __version__
from dise_cli.errors import InputError, UsageError, first_line
from dise_cli.files import atomic_path, existing_file
from dise_cli.inputs import InputJoin
from dise_cli.loopform import LoopForm
from dise_cli.integrators import Euler
from dise_cli.model_files import storable
from dise_cli.odemodel import OdeModel
from dise_cli.programs import SPLIT, WHOLE, ProgramModel, export_programs, load_program
from dise_cli.provenance import PROVENANCE_KEY, made_with
from dise_cli.seeding import seeded
from dise_cli.selector import HEADER_KEY as SELECTOR_HEADER, Selector, selector_bytes, selector_from
from dise_cli.states import StateLayout

BUNDLE_FORMAT_VERSION = 2
MANIFEST = "manifest.yaml"
CHECK_TOLERANCE = 1e-4      # programs must give the model's outputs to this (relative to their scale)


@dataclass
class ExportInfo:
    programs: str | None   # split | whole | None (the factory rebuilds the model)
    reason: str            # why not, when there are no programs
    rows_kept: int = 0     # data rows the bundle keeps to read the model again (it rejects noise)


def write_bundle(path: str | Path, ode: OdeModel, model_state: dict[str, torch.Tensor], selector: Selector,
                 example_input: torch.Tensor, arch: str | None, extra: dict[str, Any] | None = None,
                 keep_rows: bool = False, rebuilt: Callable[[], OdeModel] | None = None) -> ExportInfo:
    """Export and write the bundle atomically. Raises ``UsageError`` if it could run neither from
    programs nor from an ``--arch`` factory, ``InputError`` where the model the factory rebuilds
    (``rebuilt``) is not the model read (a pickle with an attribute set after it was built)."""
    from safetensors.torch import save as save_tensors
    programs, layout, reason, field_mode = export_programs(ode, example_input)
    if programs:
        reason = _check_programs(ode, programs, layout, field_mode, example_input)
        if reason:
            programs, layout = {}, None
    info = ExportInfo(layout if programs else None, reason, len(example_input) if keep_rows else 0)
    if not info.programs and not arch:
        raise UsageError(f"--arch: the model cannot be exported as programs ({info.reason}), and without "
                         f"--arch package.module:factory, a function that builds the model without arguments (or "
                         f"build(checkpoint=None)), the bundle could not rebuild it")
    if not info.programs and rebuilt is not None:
        differs = _compare(ode, rebuilt(), example_input)
        if differs:
            raise InputError(f"--arch {arch}: the model it builds, with the file's weights, is not the model read "
                             f"({differs}); the bundle would rebuild another model. Make the factory build the model "
                             f"as it was saved (settings assigned after building, such as a guidance scale, are not "
                             f"in the weights)")
    members: dict[str, bytes] = {
        "model.safetensors": save_tensors(storable(model_state)),
        "selector.safetensors": selector_bytes(selector),
    }
    members.update({f"{name}.pt2": data for name, data in programs.items()})
    manifest = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "dise_version": __version__,
        "candidates": list(selector.candidates),
        "baseline": int(selector.meta.get("baseline", len(selector.candidates) - 1)),
        "t_span": [float(v) for v in ode.t_span],
        # the selector learned on data with a time grid per sample (its profile keeps no one grid): the
        # bundle's t_span is only the first sample's, and every call must bring its own grids
        "per_sample_grid": selector.meta.get("t_span") == [],
        "ode_block": ode.block_path,
        "task": selector.meta.get("task"),
        "selector": {"kind": selector.net.spec.kind, "inputs": selector.net.spec.inputs,
                     "offsets": list(selector.offsets)},
        "reading": ode.record(),
        "programs": layout,
        "programs_time_mode": field_mode if programs else None,
        "programs_note": info.reason,
        "arch": arch,
        "input": input_spec(example_input, rows=keep_rows, join=ode.join),
        "metrics": (extra or {}),
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())},
        PROVENANCE_KEY: made_with(example_input.device),   # the selector member keeps where it was trained
    }
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as z:
            _write_member(z, MANIFEST, yaml.safe_dump(manifest, sort_keys=True).encode())
            for name, data in sorted(members.items()):
                _write_member(z, name, data)
    return info


def _write_member(z: zipfile.ZipFile, name: str, data: bytes) -> None:
    """A member with a fixed timestamp, so that the same inputs give a byte-identical bundle."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(info, data)


def read_members(path: str | Path) -> tuple[dict, dict[str, bytes]]:
    """The manifest and the members, with the format version and every sha256 checked."""
    p = existing_file(path, "bundle")
    try:
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
            if MANIFEST not in names:
                raise InputError(f"bundle '{p}' has no {MANIFEST}")
            manifest = yaml.safe_load(z.read(MANIFEST))
            members = {n: z.read(n) for n in names if n != MANIFEST}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputError(f"bundle '{p}' is not a readable zip file ({first_line(exc)})") from None
    except yaml.YAMLError:
        raise InputError(f"bundle '{p}': {MANIFEST} is not valid YAML") from None
    if not isinstance(manifest, dict):
        raise InputError(f"bundle '{p}': {MANIFEST} is not a mapping")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise InputError(f"bundle '{p}': {MANIFEST} has no format_version")
    if version > BUNDLE_FORMAT_VERSION:
        raise InputError(f"bundle '{p}' has format version {version}; this dise reads up to "
                         f"{BUNDLE_FORMAT_VERSION}: upgrade dise")
    if version < BUNDLE_FORMAT_VERSION:
        raise InputError(f"bundle '{p}' has format version {version}, from an earlier dise that read models by "
                         f"attributes only; export it again with this dise")
    hashes = manifest.get("sha256") or {}
    for name, digest in hashes.items():
        if name not in members:
            raise InputError(f"bundle '{p}' is missing member '{name}'")
        if hashlib.sha256(members[name]).hexdigest() != digest:
            raise InputError(f"bundle '{p}': member '{name}' does not match its sha256 in the manifest "
                             f"(tampered or damaged)")
    unlisted = sorted(set(members) - set(hashes))
    if unlisted:
        raise InputError(f"bundle '{p}' holds members the manifest does not list: {', '.join(unlisted)}")
    return manifest, members


def load_bundle(path: str | Path, device: str | torch.device = "cpu", code_path: tuple[str, ...] = ()):
    """The routed model of a ``.dise`` bundle (see ``dise_cli.load``)."""
    from safetensors.torch import load as load_tensors
    from dise_cli.routing import RoutedModel
    manifest, members = read_members(path)
    try:
        sel_bytes = members["selector.safetensors"]
        state = load_tensors(sel_bytes)
        header = _safetensors_metadata(sel_bytes).get(SELECTOR_HEADER)
        selector = selector_from(state, header, f"{path}:selector.safetensors")
        layout = manifest.get("programs")
        if layout:
            names = SPLIT if layout == "split" else WHOLE
            programs = {name: load_program(members, name, str(path)).to(device) for name in names}
            ode = ProgramModel(programs, layout, manifest["reading"], manifest["programs_time_mode"])
        else:
            ode = _ode_from_arch(members, manifest, code_path, str(path), torch.device(device))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"bundle '{path}' is damaged ({first_line(exc)})") from None
    routed = RoutedModel(ode, selector).to(device).eval()
    routed.manifest = manifest
    routed.per_sample_grid = bool(manifest.get("per_sample_grid"))
    return routed


def _safetensors_metadata(data: bytes) -> dict:
    import json
    import struct
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]).get("__metadata__", {}) or {}


def example_input(spec: dict, device: torch.device, n: int = 5, rows: bool = False) -> torch.Tensor:
    """A batch like the data a selector was trained on, what export traces with and a rebuilt model is
    read on: seeded noise shaped like it (normal for float inputs, zeros for integer ones), or with
    ``rows`` the data rows the spec keeps (for a model that rejects noise: integer codes, a valid range)."""
    dtype = getattr(torch, spec["dtype"])
    if rows:
        return torch.tensor(spec["rows"], dtype=torch.float64).to(device, dtype)
    join = InputJoin.from_dict(spec.get("inputs"))
    if join is not None:
        return join.example(n, device)
    if dtype.is_floating_point:
        return torch.randn(n, *spec["shape"], generator=torch.Generator().manual_seed(0)).to(device, dtype)
    return torch.zeros(n, *spec["shape"], dtype=dtype, device=device)


def fit_data(routed, data, bundle: str) -> None:
    """Check data against the bundle before any work: its inputs of the bundle's dtype, shaped as the bundle's were (of the
    same rank, where the bundle rebuilds the model rather than running programs), and for a
    model that takes its time grid as an argument (``forward(x, t)``), the data's grid ``t`` is that
    argument. ``InputError`` naming the data otherwise."""
    spec = routed.manifest.get("input") or {}
    ode = routed.ode
    if routed.per_sample_grid and not data.per_sample_grid:
        raise InputError(f"data '{data.name}': no time grid per sample ('t' [N, T] or end times 't_end' [N]), but "
                         f"bundle '{bundle}' was made for data with one; without it every sample would run over the "
                         f"first training sample's grid")
    made = InputJoin.from_dict(spec.get("inputs"))
    if made is not None and data.join is not None and set(made.names) == set(data.join.names) and made.names != data.join.names:
        raise InputError(f"--x-key {','.join(data.join.names)}: bundle '{bundle}' takes these inputs in the order "
                         f"{','.join(made.names)}")
    if (made is None) != (data.join is None) or (made is not None and [len(s) for s in made.shapes] !=
                                                  [len(s) for s in data.join.shapes]):
        def says(join):
            return f"{len(join)} inputs ({join.describe()})" if join is not None else "one input"
        raise InputError(f"data '{data.name}': {says(data.join)}, but bundle '{bundle}' was made for a model of "
                         f"{says(made)} (--x-key names them)")
    dtype = str(data.x.dtype).replace("torch.", "")
    if made is None and spec.get("dtype") not in (None, dtype):
        raise InputError(f"data '{data.name}': inputs of dtype {dtype}, but bundle '{bundle}' was made for {spec['dtype']} "
                         f"inputs; save them as {spec['dtype']}")
    shape, want = list(data.x.shape[1:]), spec.get("shape")
    # programs take inputs of the exported shape; the model itself may take others of the same rank
    if want is not None and (shape != want if ode.how == "programs" else len(shape) != len(want)):
        raise InputError(f"data '{data.name}': inputs of shape {tuple(shape)}, but bundle '{bundle}' was made for "
                         f"inputs of shape {tuple(want)}")
    if not ode.model_takes_grid or data.t is None:
        return
    grid = data.t.detach().to("cpu", torch.float64)
    if grid.ndim != 1:
        return                  # a grid per sample: refused where the model is asked to take it
    recorded = ode.input_grid if ode.input_grid is not None else ode.t_span
    if ode.how == "programs" and len(grid) != len(recorded):
        raise InputError(f"data '{data.name}': a time grid of {len(grid)} points, but bundle '{bundle}' was exported "
                         f"as programs for grids of {len(recorded)}; export it with data on such a grid")
    ode.input_grid = grid


def input_spec(x: torch.Tensor, rows: bool = False, join: InputJoin | None = None) -> dict:
    """The record of the data a batch stands for: shape and dtype (for a model of several inputs, of
    their packing, and each input's), and with ``rows`` the rows themselves."""
    spec = {"shape": list(x.shape[1:]), "dtype": str(x.dtype).replace("torch.", "")}
    if join is not None:
        spec["inputs"] = join.to_dict()
    if rows:
        spec["rows"] = x.detach().cpu().to(torch.float64).tolist()
    return spec


def _ode_from_arch(members: dict[str, bytes], manifest: dict, code_path: tuple[str, ...], bundle: str,
                   device: torch.device) -> OdeModel:
    """Rebuild the model with the manifest's factory and read it again as it was read at export."""
    from safetensors.torch import load as load_tensors
    from dise_cli.imports import call_factory
    from dise_cli.reading import read_model
    arch = manifest.get("arch")
    if not arch:
        raise InputError(f"bundle '{bundle}' has neither programs nor an arch factory")
    module = call_factory(arch, f"bundle '{bundle}' arch", code_path)
    module.load_state_dict(load_tensors(members["model.safetensors"]), strict=True)
    module.to(device).eval()
    reading = manifest["reading"]
    grid, given = recorded_grids(reading)
    ode = read_model(module, example_input(manifest["input"], device, rows="rows" in manifest["input"]),
                     solve=reading.get("solve"), join=InputJoin.from_dict(reading.get("inputs")),
                     output_key=reading.get("output_key"),
                     ode_block=reading.get("block") if reading["how"] == "attributes" else None, t_span=grid,
                     data_t=given, model_name=f"bundle '{bundle}' model", time_scale=reading.get("time_scale"),
                     loop_form=LoopForm.from_dict(reading.get("loop_form")))
    check_reading(ode.record(), reading, f"bundle '{bundle}'")
    return ode


def recorded_grids(reading: dict, t_span: Any = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(t_span, data_t)`` for reading a model again as ``reading`` records it: the grid of a solve
    dise cannot see (``t_span`` overrides it), and the time argument of a model that takes one
    (``forward(x, t)``), which its routed solve may not integrate over."""
    grid = None if reading["how"] == "traced" else torch.tensor(
        t_span if t_span is not None else reading["t_span"], dtype=torch.float64)
    given = None
    if reading.get("model_takes_grid"):
        given = torch.tensor(reading.get("input_grid") or reading["t_span"], dtype=torch.float64)
    return grid, given


READING_KEYS = ("how", "kind", "solve", "layout", "time_mode", "arg_order", "scalar_time", "inputs", "output_key",
                "time_scale", "loop_form", "conditioning")


def check_reading(now: dict, recorded: dict, what: str) -> None:
    """The model is read as it was when ``what`` was made; ``InputError`` naming the first difference."""
    for key in READING_KEYS:
        if _reading_value(now, key) != _reading_value(recorded, key):
            raise InputError(f"{what} was made for another reading of the model ({key}: {recorded.get(key)!r}, now "
                             f"{now.get(key)!r}); pass the same --solve / --ode-block, or make it again")


def _reading_value(record: dict, key: str) -> Any:
    """A reading's value for ``key``, as this dise writes it: a record from an older dise lacks the keys
    added since (the layout's batch axis and context, ``scalar_time``), whose defaults it read with."""
    if key == "layout" and isinstance(record.get(key), dict):
        return StateLayout.from_dict(record[key])
    if key == "scalar_time":
        return record.get(key, True)
    return record.get(key)


def _check_programs(ode: OdeModel, programs: dict[str, bytes], layout: str, field_mode: str,
                    x: torch.Tensor) -> str:
    """Load the programs back and compare the model they make with ``ode`` on ``x`` (same solver):
    '' when they agree, else why the bundle will not use them."""
    names = SPLIT if layout == "split" else WHOLE
    try:
        loaded = {name: load_program({f"{name}.pt2": data for name, data in ((n, programs[n]) for n in names)},
                                     name, "export").to(x.device) for name in names}
        rebuilt = ProgramModel(loaded, layout, ode.record(), field_mode)
        differs = _compare(ode, rebuilt, x)
    except Exception as exc:  # noqa: BLE001 - an exported program that does not run
        return f"the exported programs do not run ({type(exc).__name__}: {first_line(exc)})"
    return f"the exported programs do not reproduce the model ({differs})" if differs else ""


def _compare(ode: OdeModel, other: OdeModel, x: torch.Tensor) -> str:
    """'' where ``other`` gives ``ode``'s outputs on ``x`` (the same Euler solve, the same random draws),
    else the difference in words."""
    solver = Euler(steps=4)

    def outputs(model: OdeModel) -> torch.Tensor:
        with torch.no_grad(), seeded(0, x.device):
            return model.forward_with(x, lambda p: solver.solve(p.field, p.h0, p.t).ys)
    want, got = outputs(ode), outputs(other)
    scale = 1.0 + float(want.detach().double().abs().max())
    diff = float((want.double() - got.double()).abs().max()) if want.shape == got.shape else float("inf")
    return "" if diff <= CHECK_TOLERANCE * scale else f"difference {diff:.3g} on {len(x)} samples"
