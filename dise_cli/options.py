"""Shared option aliases, so every command spells a flag and its help the same way."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="Model file (.pt/.pth/.safetensors) or a dise.yaml project file.",
                                         show_default=False)]
Data = Annotated[Optional[str], typer.Option("--data", help="Data file: .pt, .safetensors or .npz with x (and y) keys.")]
DataFactory = Annotated[Optional[str], typer.Option("--data-factory", help="package.module:fn returning tensors or a Dataset.")]
XKey = Annotated[Optional[str], typer.Option("--x-key", help="Key of the inputs in the data file [default: x, or y0].")]
YKey = Annotated[Optional[str], typer.Option("--y-key", help="Key of the labels/targets [default: y if present].")]
Arch = Annotated[Optional[str], typer.Option("--arch", help="package.module:factory that builds the model for a state dict.")]
TrustPickle = Annotated[Optional[bool], typer.Option("--trust-pickle", help="Allow a pickled whole module (runs code from the file).", show_default=False)]
CodePath = Annotated[Optional[list[str]], typer.Option("--code-path", help="Extra folder to import user code from (repeatable).")]
OdeBlock = Annotated[Optional[str], typer.Option("--ode-block", help="Dotted path of the module whose solve dise routes (or, for a solve dise cannot see, the ODE block).")]
Solve = Annotated[Optional[int], typer.Option("--solve", help="Route the N-th solver call of the model's forward (0-based; dise inspect lists them) [default: the most expensive].")]
TSpan = Annotated[Optional[str], typer.Option("--t-span", help="Time grid, e.g. 0,1 or 0,0.5,1, for a model whose solver call dise cannot see (a bare vector field).")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N [default: auto].")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Samples per batch [default: 256].")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for sampling and training [default: 0].")]
Config = Annotated[Optional[str], typer.Option("--config", help="dise.yaml with any of these options (flags win).")]
JsonOut = Annotated[Optional[str], typer.Option("--json", help="Write the report as JSON to PATH ('-' for stdout).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Plain output, no progress bars or notes.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")]
