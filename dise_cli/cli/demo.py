"""``dise demo``: the whole pipeline on the bundled MNIST ODE-Net."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dise_cli.cli import options as opt
from dise_cli.cli.command import check_report_targets, command
from dise_cli.errors import UsageError
from dise_cli.output import Output


@command(
    "dise demo",
    "dise demo --out demo_out --json demo.json",
)
def demo(
    out: Annotated[Optional[str], typer.Option("--out", help="Folder for the profile, selector, bundle and plots [default: a temporary folder].")] = None,
    train_limit: Annotated[Optional[int], typer.Option("--train-limit", help="Profile only N training images (faster) [default: all 4000].")] = None,
    device: opt.Device = None,
    json_path: opt.JsonOut = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """The whole pipeline on the bundled MNIST ODE-Net: profile its training split, train the
    selector, export the bundle, evaluate on its test split, and print the paper's table
    (Model | Accuracy | NFE | time per batch). With --out it also draws the plots there (when
    matplotlib is installed). About a minute on 2 CPU cores.
    """
    import tempfile

    from dise_cli.config import positive_int
    from dise_cli.demo import run_demo
    from dise_cli.render import render_demo

    check_report_targets(json_path, None)
    limit = None if train_limit is None else positive_int(train_limit, "--train-limit")
    ui = Output(quiet=quiet, json_path=json_path)
    if out is not None:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out: '{folder}' is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        report = run_demo(folder, device, limit, note=ui.note, plots=True)
    else:
        with tempfile.TemporaryDirectory(prefix="dise-demo-") as tmp:
            report = run_demo(Path(tmp), device, limit, note=ui.note)
        report["files"] = {}          # gone with the temporary folder
    render_demo(ui, report)
