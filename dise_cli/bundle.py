"""The ``.dise`` bundle: one zip holding everything that runs the routed model.

Members: ``manifest.yaml`` (format version, dise version, candidates, time span, ODE block, task,
selector, the model's split, metrics measured at export, and the sha256 of every other member),
``model.safetensors`` (the model's state dict), ``selector.safetensors``, and, where
``torch.export`` can export them, ``encoder.pt2``, ``ode_function.pt2`` and ``decoder.pt2`` so that
the bundle runs without the user's code. Otherwise the manifest names the ``--arch`` factory that
rebuilds the model. No pickle: ``torch.export`` writes its sample inputs as a pickle, so dise
writes that member empty, and refuses a bundle whose programs carry one.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from dise_cli import __version__
from dise_cli.errors import InputError, UsageError, first_line
from dise_cli.files import atomic_path, existing_file
from dise_cli.integrators.vector_field import TimeMode, VectorField
from dise_cli.odeblock import OdeModel
from dise_cli.selector import HEADER_KEY as SELECTOR_HEADER, Selector, selector_bytes, selector_from

BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.yaml"
PROGRAMS = ("encoder", "ode_function", "decoder")


@dataclass
class ExportInfo:
    programs: bool
    reason: str            # why not, when programs is False


class _PerRowTime(nn.Module):
    """Adapts an exported f(t [N, 1, ..., 1], h) to be called with a 0-dim t as well."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(len(h)).reshape(-1, *([1] * (h.ndim - 1)))
        return self.program(t, h)


class _Parts(nn.Module):
    """Encoder, ODE function and decoder of a bundle, in the shape ``OdeModel`` expects."""

    exported_programs = True

    def __init__(self, encoder: nn.Module, func: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.ode_block = nn.Module()
        self.ode_block.func = func
        self.decoder = decoder


def _export_parts(ode: OdeModel, x: torch.Tensor) -> tuple[dict[str, bytes], ExportInfo]:
    """``torch.export`` encoder, f and decoder with a dynamic batch axis; empty dict if any fails."""
    if ode.kind == "nested":
        return {}, ExportInfo(False, "the model's forward calls the ODE block itself, so encoder and decoder "
                                     "do not run on their own")
    if ode.output_format == "torchdyn":
        return {}, ExportInfo(False, "the block returns (t, trajectory); exported programs take tensors only")
    batch = torch.export.Dim("batch", min=2, max=1 << 20)
    x = x[:4] if len(x) >= 2 else x.expand(2, *x.shape[1:])
    encoder = ode.encoder if ode.kind == "sequential" else nn.Identity()
    decoder = ode.decoder if ode.kind == "sequential" else nn.Identity()
    per_row = ode.field.mode in (TimeMode.AUTONOMOUS, TimeMode.BROADCAST)
    with torch.no_grad():
        h0 = encoder(x)
        t = torch.zeros(len(h0), *([1] * (h0.ndim - 1)), dtype=h0.dtype, device=h0.device) if per_row \
            else torch.zeros((), dtype=h0.dtype, device=h0.device)
        block_out = ode.block_output(h0.unsqueeze(0).expand(len(ode.t_span), *h0.shape).contiguous())
    out_batch_dim = 1 if ode.output_format == "trajectory" else 0
    try:
        programs = {
            "encoder": torch.export.export(encoder, (x,), dynamic_shapes=({0: batch},)),
            "ode_function": torch.export.export(ode.func, (t, h0),
                                                dynamic_shapes=({0: batch} if per_row else None, {0: batch})),
            "decoder": torch.export.export(decoder, (block_out,), dynamic_shapes=({out_batch_dim: batch},)),
        }
    except Exception as exc:  # noqa: BLE001 - torch.export fails in many ways on user code
        return {}, ExportInfo(False, f"torch.export failed: {type(exc).__name__}: {first_line(exc)}")
    return {name: _without_pickle(ep) for name, ep in programs.items()}, ExportInfo(True, "")


def _without_pickle(ep) -> bytes:
    """The .pt2 archive with its sample-inputs member (a pickle) left empty."""
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            z.writestr(info, b"" if "sample_inputs" in info.filename else src.read(info.filename))
    return out.getvalue()


def write_bundle(path: str | Path, ode: OdeModel, model_state: dict[str, torch.Tensor], selector: Selector,
                 example_input: torch.Tensor, arch: str | None, extra: dict[str, Any] | None = None) -> ExportInfo:
    """Export and write the bundle atomically. Raises ``UsageError`` if it could run neither from
    programs nor from an ``--arch`` factory."""
    from safetensors.torch import save as save_tensors
    programs, info = _export_parts(ode, example_input)
    if not info.programs and not arch:
        raise UsageError(f"--arch: the model cannot be exported as programs ({info.reason}), and without "
                         f"--arch package.module:factory the bundle could not rebuild it")
    members: dict[str, bytes] = {
        "model.safetensors": save_tensors({k: v.detach().cpu().contiguous() for k, v in model_state.items()}),
        "selector.safetensors": selector_bytes(selector),
    }
    members.update({f"{name}.pt2": data for name, data in programs.items()})
    manifest = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "dise_version": __version__,
        "candidates": list(selector.candidates),
        "baseline": int(selector.meta.get("baseline", len(selector.candidates) - 1)),
        "t_span": [float(v) for v in ode.t_span],
        "ode_block": ode.block_path,
        "task": selector.meta.get("task"),
        "selector": {"kind": selector.net.spec.kind, "inputs": selector.net.spec.inputs,
                     "offsets": list(selector.offsets)},
        "split": {"kind": ode.kind, "func_attr": ode.func_attr, "output_format": ode.output_format,
                  "output_time_major": ode.output_time_major, "time_mode": ode.field.mode.value,
                  "h0_shape": list(ode.h0_shape)},
        "programs": info.programs,
        "programs_note": info.reason,
        "arch": arch,
        "input": {"shape": list(example_input.shape[1:]), "dtype": str(example_input.dtype).replace("torch.", "")},
        "metrics": (extra or {}),
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())},
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
        split = manifest["split"]
        t_span = torch.tensor(manifest["t_span"], dtype=torch.float64)
        if manifest.get("programs"):
            ode = _ode_from_programs(members, split, t_span, str(path), torch.device(device))
        else:
            ode = _ode_from_arch(members, manifest, split, t_span, code_path, str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"bundle '{path}' is damaged ({first_line(exc)})") from None
    routed = RoutedModel(ode, selector).to(device).eval()
    routed.manifest = manifest
    return routed


def _safetensors_metadata(data: bytes) -> dict:
    import json
    import struct
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]).get("__metadata__", {}) or {}


def _load_program(members: dict[str, bytes], name: str, bundle: str) -> nn.Module:
    data = members.get(f"{name}.pt2")
    if data is None:
        raise InputError(f"bundle '{bundle}' is missing member '{name}.pt2'")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if ("sample_inputs" in info.filename or info.filename.endswith((".pt", ".pkl"))) and info.file_size:
                raise InputError(f"bundle '{bundle}': '{name}.pt2' carries a pickle ('{info.filename}'); dise "
                                 f"does not load it")
    try:
        return torch.export.load(io.BytesIO(data)).module()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"bundle '{bundle}': '{name}.pt2' could not be loaded ({first_line(exc)})") from None


def _ode_from_programs(members: dict[str, bytes], split: dict, t_span: torch.Tensor, bundle: str,
                       device: torch.device) -> OdeModel:
    encoder, func, decoder = (_load_program(members, name, bundle).to(device) for name in PROGRAMS)
    per_row = split["time_mode"] in (TimeMode.AUTONOMOUS.value, TimeMode.BROADCAST.value)
    func = _PerRowTime(func) if per_row else func
    parts = _Parts(encoder, func, decoder)
    ode = OdeModel(module=parts, kind="sequential", block_path="ode_block", func_attr="func", t_span=t_span,
                   t_span_source="bundle", output_format=split["output_format"],
                   output_time_major=bool(split["output_time_major"]), encoder=encoder, decoder=decoder,
                   h0_shape=tuple(split["h0_shape"]))
    ode.field = VectorField(func, TimeMode.BROADCAST if per_row else TimeMode.LOOP)
    return ode


def _ode_from_arch(members: dict[str, bytes], manifest: dict, split: dict, t_span: torch.Tensor,
                   code_path: tuple[str, ...], bundle: str) -> OdeModel:
    from safetensors.torch import load as load_tensors
    from dise_cli.imports import call_factory
    from dise_cli.odeblock import split_model
    arch = manifest.get("arch")
    if not arch:
        raise InputError(f"bundle '{bundle}' has neither programs nor an arch factory")
    module = call_factory(arch, f"bundle '{bundle}' arch", code_path)
    module.load_state_dict(load_tensors(members["model.safetensors"]), strict=True)
    module.eval()
    ode = split_model(module, ode_block=manifest.get("ode_block") or None, t_span=t_span)
    ode.output_format = split["output_format"]
    ode.output_time_major = bool(split["output_time_major"])
    ode.h0_shape = tuple(split["h0_shape"])
    ode.field = VectorField(ode.func, TimeMode(split["time_mode"]))
    return ode
