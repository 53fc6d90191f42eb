"""``dise demo``: the whole pipeline on the bundled MNIST ODE-Net (profile its training split, train
the selector, export the bundle, evaluate on its test split), through the Python API."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from dise_cli import api
from dise_cli.errors import InputError

SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "mnist_odenet"
PLOTS = {"profile": "profile.png", "training": "training.png", "evaluation": "evaluation.png"}


def run_demo(out_dir: Path, device: str | None = None, train_limit: int | None = None,
             note: Callable[[str], None] = print, plots: bool = False) -> dict:
    """Run every step, writing profile, selector and bundle (and, with ``plots`` and matplotlib
    installed, the three plots) into ``out_dir``; the evaluation report."""
    project = SAMPLE / "dise.yaml"
    if not project.exists():
        raise InputError(f"the bundled sample '{SAMPLE}' is not there: dise demo runs from a clone of the "
                         f"dise repository (pip install -e .)")
    began = time.perf_counter()
    train = str(SAMPLE / "train.safetensors")
    profile_path = out_dir / "train.profile.safetensors"
    note(f"[1/4] profiling {train_limit or 'all'} training images")
    run = api.profile(project, out=profile_path, data=train, limit=train_limit, batch_size=256, device=device,
                      note=note)
    note("[2/4] training the selector")
    selector_path = out_dir / "selector.safetensors"
    result = api.train_selector(project, profile_path, out=selector_path, data=train, device=device)
    note("[3/4] exporting the bundle")
    bundle_path = out_dir / "mnist_odenet.dise"
    api.export(project, selector_path, bundle_path, device=device)
    note("[4/4] evaluating on the 1000 test images")
    report = api.evaluate(bundle_path, str(SAMPLE / "test.safetensors"), batch_sizes=(256,), device=device)
    report["training"] = result.report
    report["seconds"] = round(time.perf_counter() - began, 1)
    report["files"] = {"profile": str(profile_path), "selector": str(selector_path), "bundle": str(bundle_path)}
    if plots:
        report["files"].update(_draw(out_dir, run, result.report, report, note))
    return report


def _draw(out_dir: Path, run, training: dict, evaluation: dict, note: Callable[[str], None]) -> dict[str, str]:
    """The three plots, where matplotlib is installed (else a note saying what to install)."""
    from dise_cli.errors import UsageError
    from dise_cli import plots
    try:
        plots.check_plot_path(out_dir / PLOTS["profile"], "--plot")
    except UsageError as exc:
        note(f"note: no plots ({exc})")
        return {}
    paths = {name: out_dir / file for name, file in PLOTS.items()}
    plots.plot_profile(run, paths["profile"])
    plots.plot_training(training, paths["training"])
    plots.plot_evaluation(evaluation, paths["evaluation"])
    return {f"{name}_plot": str(path) for name, path in paths.items()}
