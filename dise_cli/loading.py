"""Load the user's model: a state dict (.pt/.pth/.safetensors) plus --arch, a checkpoint holding
several state dicts plus an --arch factory that takes it, or a pickled module with --trust-pickle.
Nothing here runs code from a file unless --trust-pickle says so (numpy arrays in a checkpoint are
rebuilt by numpy's array constructors only)."""
from __future__ import annotations

import inspect
import pickle
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
import torch
from torch import nn

from dise_cli.errors import InputError, UsageError, first_line
from dise_cli.files import existing_file, sha256_file
from dise_cli.imports import call_factory, code_paths

STATE_DICT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")     # .ckpt: PyTorch Lightning's checkpoints
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Prefixes training wrappers put on every key: nn.DataParallel / DDP, torch.compile, a LightningModule's
# self.model, an EMA wrapper's module.
KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
# Globals that a plain tensor checkpoint names (tensor rebuilding, storages, containers).
SAFE_GLOBAL_PREFIXES = ("torch._utils.", "torch._tensor.", "torch.storage.", "collections.OrderedDict",
                        "torch.Size", "torch.device", "torch.serialization.")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: the file and what is needed to rebuild it."""

    path: Path
    arch: str | None = None
    trust_pickle: bool = False
    code_path: tuple[str, ...] = field(default_factory=tuple)
    state_key: str | None = None      # the state dict to take from a checkpoint holding several


@dataclass
class LoadedModel:
    module: nn.Module
    spec: ModelSpec
    format: str          # "state_dict" | "safetensors" | "pickle" | "checkpoint" (given to the --arch factory)
    sha256: str
    note: str = ""       # what dise chose in the file (which state dict, a prefix taken off), for people

    @property
    def rebuildable(self) -> bool:
        """The --arch factory builds the model without arguments, so a bundle can rebuild it from its weights."""
        return bool(self.spec.arch) and not _factory_params(self.spec)[0]


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load and rebuild the model named by ``spec``; ``InputError``/``UsageError`` with one clear line."""
    path = existing_file(spec.path, "model")
    suffix = path.suffix.lower()
    if suffix not in STATE_DICT_SUFFIXES:
        raise InputError(f"model '{path}': unknown format '{suffix or '(no suffix)'}'; dise reads "
                         f".pt/.pth (state dict or, with --trust-pickle, a pickled module), .safetensors, "
                         f"or a dise.yaml project file")
    if suffix == ".safetensors":
        state, fmt = _read_safetensors(path), "safetensors"
    else:
        state, fmt = _read_torch(path, spec)
    note = ""
    if isinstance(state, nn.Module):
        module = state
        if spec.arch:         # a factory that rebuilds it (export needs one where torch.export cannot capture it)
            _rebuild(path, module.state_dict(), spec)
    elif spec.arch and spec.state_key is None and not _is_state_dict(state) and _names_checkpoint(spec):
        module, fmt = _from_checkpoint(path, state, spec), "checkpoint"    # build(checkpoint) loads it itself
    else:
        try:
            inner, note = _unwrap_state(path, state, spec.state_key)
            module, stripped = _rebuild(path, inner, spec)
        except InputError:
            if not (spec.arch and spec.state_key is None and _takes_checkpoint(spec)):
                raise
            module, fmt, stripped = _from_checkpoint(path, state, spec), "checkpoint", ""
        if stripped:
            note = "; ".join(n for n in (note, f"its keys carry the prefix '{stripped}', which dise took off") if n)
    module.eval()
    return LoadedModel(module=module, spec=spec, format=fmt, sha256=sha256_file(path), note=note)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"model '{path}' is not a readable safetensors file ({first_line(exc)})") from None


def _read_torch(path: Path, spec: ModelSpec):
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        objects = [g for g in pickled_globals(path)
                   if not g.startswith(SAFE_GLOBAL_PREFIXES) and not g.endswith("Storage")]
        if not objects:                                       # not a pickle of objects: damaged or not PyTorch
            raise InputError(f"model '{path}' is not a readable PyTorch file") from None
        if all(g.startswith(PLAIN_GLOBALS) for g in objects) and "numpy.dtypes.ObjectDType" not in objects:
            return _read_with_plain_objects(path), "state_dict"
        main = next((g for g in objects if g.startswith("__main__.")), None)
        if main is not None:
            raise InputError(f"model '{path}' holds a class pickled from a script run as __main__ ({main}), which no "
                             f"other program can import; define the class in a module (e.g. mymodel.py), then save "
                             f"model.state_dict() and pass --arch mymodel:build, or pickle the model again after "
                             f"importing the class from that module") from None
        if not spec.trust_pickle:
            raise InputError(
                f"model '{path}' holds pickled Python objects ({objects[0]}); unpickling runs code from "
                f"the file, so dise refuses it. Save model.state_dict() and pass --arch package.module:factory, "
                f"or pass --trust-pickle if you trust this file") from None
        return _read_pickle(path, spec), "pickle"
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on damaged files (struct, zip, ...)
        if _is_torchscript(path):
            raise InputError(f"model '{path}' is a TorchScript archive (torch.jit.save), which keeps compiled code, "
                             f"not the Python module dise reads; save torch.jit.load('{path.name}').state_dict() "
                             f"with torch.save and pass --arch package.module:factory that builds the module") from None
        raise InputError(f"model '{path}' is not a readable PyTorch file ({type(exc).__name__}: "
                         f"{first_line(exc)})") from None
    return obj, "state_dict"


def _is_torchscript(path: Path) -> bool:
    """A zip whose members hold TorchScript's compiled code (``code/`` beside ``data.pkl``)."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name or name.startswith("code/") for name in z.namelist())
    except Exception:  # noqa: BLE001 - a damaged zip fails in many ways (bad names, bad headers): not TorchScript
        return False


PLAIN_GLOBALS = ("argparse.Namespace", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
                       "numpy.dtype", "numpy.dtypes.", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                       "_codecs.encode")


def _read_with_plain_objects(path: Path):
    """A checkpoint whose only objects besides tensors are numpy arrays (torchdiffeq's latent ODE example
    saves its data with the weights) or the script's ``argparse`` arguments (its ODE-Net example saves
    ``{'state_dict': ..., 'args': args}``): loaded with weights_only and just those constructors allowed,
    none of which runs code from the file."""
    import argparse

    import numpy as np
    core = getattr(np, "_core", None) or np.core
    allowed = [argparse.Namespace, np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType") and n != "ObjectDType"]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - damaged or with objects numpy's constructors do not build
        raise InputError(f"model '{path}' is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                         f"{first_line(exc)})") from None


def _read_pickle(path: Path, spec: ModelSpec) -> nn.Module:
    with code_paths(spec.code_path):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except ModuleNotFoundError as exc:
            raise InputError(f"model '{path}' needs module '{exc.name}', which cannot be imported; run dise from "
                             f"the folder that holds it or add --code-path DIR") from None
        except AttributeError as exc:
            if "__main__" in str(exc):
                raise InputError(f"model '{path}' holds a class pickled from a script run as __main__ "
                                 f"({first_line(exc)}); define the class in a module (e.g. mymodel.py), then save "
                                 f"model.state_dict() and pass --arch mymodel:build") from None
            raise InputError(f"model '{path}' names a class that cannot be found ({first_line(exc)}); "
                             f"add --code-path DIR for the code that defines it") from None
        except Exception as exc:  # noqa: BLE001 - arbitrary unpickling failures
            raise InputError(f"model '{path}' could not be unpickled ({type(exc).__name__}: "
                             f"{first_line(exc)})") from None
    if isinstance(obj, dict):
        return obj
    if not isinstance(obj, nn.Module):
        raise InputError(f"model '{path}' holds a {type(obj).__name__}, not an nn.Module or a state dict")
    return obj


def _unwrap_state(path: Path, obj, key: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in a file: the file itself, the one under ``key`` (--state-key), or the only one a
    checkpoint holds; with a note saying which. A checkpoint holding several (the weights and their EMA,
    torchcfm's net_model and ema_model) is refused without ``key``: dise never picks one silently."""
    if isinstance(obj, dict):
        if _is_state_dict(obj):
            if key is not None:
                raise UsageError(f"--state-key {key}: model '{path}' is one state dict, not a checkpoint holding several")
            return obj, ""
        states = [k for k, v in obj.items() if _is_state_dict(v) and not str(k).startswith("optim")]
        if key is not None:
            if key not in states:
                raise UsageError(f"--state-key {key}: model '{path}' holds no state dict under '{key}'"
                                 + (f"; it holds {', '.join(map(str, states))}" if states else ""))
            return obj[key], f"loaded the state dict '{key}' of checkpoint '{path.name}'"
        if len(states) == 1:
            others = [str(k) for k in obj if k != states[0]]
            return obj[states[0]], (f"loaded the state dict '{states[0]}' of checkpoint '{path.name}'"
                                    + (f" (it also holds {', '.join(others[:4])}{', ...' if len(others) > 4 else ''})"
                                       if others else ""))
        if states:
            others = [str(k) for k in obj if k not in states]
            raise InputError(f"model '{path}' is a checkpoint holding several state dicts ({', '.join(map(str, states))})"
                             + (f" and other entries ({', '.join(others[:4])}{', ...' if len(others) > 4 else ''})"
                                if others else "")
                             + "; name the one to load with --state-key KEY (the EMA weights are usually the ones to "
                               "sample with), or pass --arch package.module:build where build(checkpoint) loads it")
    raise InputError(f"model '{path}' is not a state dict (a dict of tensors, or a checkpoint holding one)")


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _factory_params(spec: ModelSpec) -> tuple[list[str], list[str]]:
    """The --arch factory's (required, optional) positional parameters."""
    from dise_cli.imports import import_object
    factory = import_object(spec.arch, "--arch", spec.code_path)
    try:
        params = [p for p in inspect.signature(factory).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return [], []
    return [p.name for p in params if p.default is p.empty], [p.name for p in params if p.default is not p.empty]


def _takes_checkpoint(spec: ModelSpec) -> bool:
    """The --arch factory takes the checkpoint and loads it itself: its first parameter names it
    (``build(checkpoint=None)`` also builds the model alone, as a bundle needs), or it requires an
    argument. A factory whose parameters are all settings with defaults (``build(n_steps=8)``) is not
    given a checkpoint in place of one."""
    required, _ = _factory_params(spec)
    return bool(required) or _names_checkpoint(spec)


def _names_checkpoint(spec: ModelSpec) -> bool:
    """The --arch factory's first parameter is the checkpoint (``build(checkpoint)``, ``build(ckpt=None)``):
    it is given the file's dict, whatever state dicts dise would find in it."""
    required, optional = _factory_params(spec)
    first = (required + optional)[:1]
    return bool(first) and first[0] in ("checkpoint", "ckpt", "checkpoint_dict", "state")


def _from_checkpoint(path: Path, checkpoint, spec: ModelSpec) -> nn.Module:
    module = call_factory(spec.arch, "--arch", spec.code_path, checkpoint)
    if not isinstance(module, nn.Module):
        raise UsageError(f"--arch: '{spec.arch}(checkpoint)' returned a {type(module).__name__}, not an nn.Module")
    return module


def _rebuild(path: Path, state: dict[str, torch.Tensor], spec: ModelSpec) -> tuple[nn.Module, str]:
    """The --arch factory's model with ``state`` loaded, and the key prefix taken off (a training wrapper's,
    such as DataParallel's 'module.', where taking it off gives exactly the model's keys), or ''."""
    if not spec.arch:
        raise UsageError(f"--arch: model '{path}' is a state dict; name the code that builds the model with "
                         f"--arch package.module:factory")
    module = call_factory(spec.arch, "--arch", spec.code_path)
    if not isinstance(module, nn.Module):
        raise UsageError(f"--arch: '{spec.arch}()' returned a {type(module).__name__}, not an nn.Module")
    expected = module.state_dict()
    stripped = ""
    if set(state) != set(expected):
        for prefix in KEY_PREFIXES:
            if state and all(k.startswith(prefix) for k in state) and \
                    {k[len(prefix):] for k in state} == set(expected):
                state, stripped = {k[len(prefix):]: v for k, v in state.items()}, prefix
                break
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatch (file vs arch)", mismatched)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        prefixes = {k.split(".", 1)[0] + "." for k in state if "." in k}
        hint = (f" (every key of the file starts with '{next(iter(prefixes))}')"
                if len(prefixes) == 1 and len(state) > 1 and missing else "")
        raise InputError(f"model '{path}' does not fit --arch {spec.arch}: {'; '.join(problems)}{hint}")
    module.load_state_dict(state, strict=True)
    return module, stripped


def pickled_globals(path: Path) -> list[str]:
    """Classes and functions a pickle (or a torch zip's data.pkl) would import, found by reading its
    opcodes with ``pickletools``, which executes nothing. Empty if the bytes are not a pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0]) if names else b""
        else:
            data = path.read_bytes()
    except Exception:  # noqa: BLE001 - a damaged zip fails in many ways (even UnicodeDecodeError on names)
        return []
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - damaged bytes end the scan; what was found stands
        pass
    return found
