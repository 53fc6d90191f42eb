"""Shared option aliases, so every command spells a flag and its help the same way, and help texts
that show a setting's default read it from the settings dataclass that holds it."""
from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Optional

import typer

ModelArg = Annotated[str, typer.Argument(metavar="MODEL", show_default=False,
                                         help="Model file (.pt/.pth/.safetensors) or a dise.yaml project file.")]
BundleArg = Annotated[str, typer.Argument(metavar="BUNDLE", show_default=False, help="A .dise bundle written by dise export.")]
Data = Annotated[Optional[str], typer.Option("--data", help="Data file: .pt, .safetensors or .npz with x (and y) keys.")]
DataFactory = Annotated[Optional[str], typer.Option("--data-factory", help="package.module:fn returning tensors or a Dataset.")]
XKey = Annotated[Optional[str], typer.Option("--x-key", help="Key of the inputs in the data file [default: x, or y0].")]
YKey = Annotated[Optional[str], typer.Option("--y-key", help="Key of the labels/targets [default: y if present].")]
Arch = Annotated[Optional[str], typer.Option("--arch", help="package.module:factory that builds the model for a state dict.")]
TrustPickle = Annotated[Optional[bool], typer.Option("--trust-pickle", show_default=False,
                                                     help="Allow a pickled whole module (runs code from the file).")]
StateKey = Annotated[Optional[str], typer.Option("--state-key", help="The state dict to load from a checkpoint holding several, e.g. ema_model or model_ema.")]
CodePath = Annotated[Optional[list[str]], typer.Option("--code-path", help="Extra folder to import user code from (repeatable).")]
OdeBlock = Annotated[Optional[str], typer.Option("--ode-block", help="Dotted path of the module whose solve dise routes (or, for a solve dise cannot see, the ODE block).")]
Solve = Annotated[Optional[int], typer.Option("--solve", help="Route the N-th solver call of the model's forward (0-based; dise inspect lists them) [default: the most expensive adaptive one].")]
OutputKey = Annotated[Optional[str], typer.Option("--output-key", help="The output dise judges, for a forward that returns several: a dict's key, or a tuple's index or field [default: a dict's one tensor, a tuple's last element].")]
TSpan = Annotated[Optional[str], typer.Option("--t-span", help="Time grid, e.g. 0,1 or 0,0.5,1, for a model whose solver call dise cannot see (a bare vector field).")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N [default: auto].")]
Config = Annotated[Optional[str], typer.Option("--config", help="dise.yaml with any of these options (flags win).")]
JsonOut = Annotated[Optional[str], typer.Option("--json", help="Write the report as JSON to PATH ('-' for stdout).")]
Plot = Annotated[Optional[str], typer.Option("--plot", help="Draw the report to PATH (.png or .svg; needs the plot extra: pip install -e \".[plot]\").")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Plain output, no progress bars or notes.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks and library warnings instead of one-line errors.")]

# Each field of DataOptions / ModelOptions and the option that sets it on the command line.
SHARED = {
    "model": ModelArg, "data": Data, "data_factory": DataFactory, "x_key": XKey, "y_key": YKey, "arch": Arch,
    "trust_pickle": TrustPickle, "state_key": StateKey, "code_path": CodePath, "ode_block": OdeBlock, "solve": Solve, "t_span": TSpan,
    "output_key": OutputKey, "device": Device, "config": Config,
}


def default_of(settings: type, name: str) -> Any:
    """The default of field ``name`` of a settings dataclass (the one place it is written)."""
    field = {f.name: f for f in dataclasses.fields(settings)}[name]
    return field.default


def shown(value: Any) -> str:
    """A default as a person would type it on the command line."""
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting(settings: type, name: str, flag: str, help: str, when_none: str | None = None, **kwargs: Any) -> Any:
    """A ``typer.Option`` for a settings field: help ends with ``[default: ...]`` read from the
    dataclass (``when_none`` says in words what a None default means)."""
    default = default_of(settings, name)
    text = default if default is not None else when_none
    suffix = f" [default: {shown(text) if default is not None else text}]" if text is not None else ""
    return typer.Option(flag, help=help + suffix, **kwargs)

FIGURE_DATA_HELP = ("Held-out samples of the distribution a sampler was trained to reach (key x, shaped like one "
                    "output): the energy figure is also given to them. For --figure energy.")
