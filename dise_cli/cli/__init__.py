"""The ``dise`` command line: the Typer app, and every command registered on it in this one place.

Each command module holds plain functions (parse flags -> call ``dise_cli.api`` -> render) and never
imports this package back, so there is no import cycle.
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from dise_cli import __version__
from dise_cli.cli.bundles import evaluate, run
from dise_cli.cli.demo import demo
from dise_cli.cli.finetuning import finetune
from dise_cli.cli.profiling import inspect, merge, profile
from dise_cli.cli.selection import export, train_selector

app = typer.Typer(help="dise: make trained Neural ODEs faster by choosing an integrator per input.",
                  pretty_exceptions_enable=False, no_args_is_help=True, add_completion=False,
                  rich_markup_mode=None)   # help texts hold [brackets]: print them, do not parse them


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dise {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                         help="Print the version and exit.")] = None) -> None:
    """dise profiles a Neural ODE per integrator and per input, so that each input can get the
    cheapest integrator that still answers it right."""


COMMANDS = {
    "inspect": inspect, "profile": profile, "merge": merge, "train-selector": train_selector, "export": export,
    "evaluate": evaluate, "run": run, "finetune": finetune, "demo": demo,
}
for _name, _fn in COMMANDS.items():
    app.command(_name)(_fn)


def entry() -> None:
    """The ``dise`` console script and ``python -m dise_cli``. Under torchrun a rank ends with
    ``os._exit`` once its command has finished (its output flushed, the process group left): the
    interpreter's own teardown can otherwise race gloo's worker threads and abort the rank
    ("terminate called without an active exception", SIGABRT) after its work was done."""
    import os
    import sys

    from dise_cli import distributed
    try:
        app(prog_name="dise")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if distributed.launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
