"""``dise demo``: the whole pipeline on the bundled MNIST ODE-Net (profile its training split, train
the selector, export the bundle, evaluate on its test split)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from dise_cli.bundle import load_bundle
from dise_cli.errors import InputError
from dise_cli.evaluation import Gates, evaluate_routed
from dise_cli.exporting import export_bundle
from dise_cli.files import sha256_file
from dise_cli.pipeline import make_inputs, open_inputs, profile_model, read_config
from dise_cli.profiles import write_profile
from dise_cli.profiling import select_rows
from dise_cli.selector import write_selector
from dise_cli.selector_training import TrainSettings, train_selector

SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "mnist_odenet"


def run_demo(out_dir: Path, device: torch.device, train_limit: int | None = None,
             note: Callable[[str], None] = print) -> dict:
    """Run every step, writing profile, selector and bundle into ``out_dir``; the evaluation report."""
    project = SAMPLE / "dise.yaml"
    if not project.exists():
        raise InputError(f"the bundled sample '{SAMPLE}' is not there: dise demo runs from a clone of the "
                         f"dise repository (pip install -e .)")
    began = time.perf_counter()
    cfg, model_path = read_config(str(project), None)

    def opened_for(split: str):
        return open_inputs(make_inputs(str(project), cfg, model_path, arch=None, trust_pickle=None, code_path=None,
                                       ode_block=None, t_span=None, data=str(SAMPLE / f"{split}.safetensors"),
                                       data_factory=None, x_key=None, y_key=None, device=str(device)))

    train = opened_for("train")
    rows = select_rows(len(train.data), train_limit, 0)
    note(f"[1/4] profiling {len(rows)} training images with {','.join(train.candidates.specs)}"
         + (f" (a subset: --train-limit {train_limit})" if train_limit else ""))
    run = profile_model(train, rows=rows, batch_size=256)
    profile_path = out_dir / "train.profile.safetensors"
    write_profile(run.profile, profile_path)
    note("[2/4] training the selector")
    result = train_selector(train, run.profile, str(profile_path), TrainSettings())
    result.selector.meta["profile_sha256"] = sha256_file(profile_path)
    selector_path = out_dir / "selector.safetensors"
    write_selector(result.selector, selector_path)
    note("[3/4] exporting the bundle")
    bundle_path = out_dir / "mnist_odenet.dise"
    inputs = make_inputs(str(project), cfg, model_path, arch=None, trust_pickle=None, code_path=None, ode_block=None,
                         t_span=None, data=None, data_factory=None, x_key=None, y_key=None, device=str(device))
    export_bundle(inputs, result.selector, str(selector_path), bundle_path)
    note("[4/4] evaluating on the 1000 test images")
    test = opened_for("test")
    routed = load_bundle(bundle_path, device=device)
    report = evaluate_routed(routed, test.data, rows=torch.arange(len(test.data)), batch_size=256, batch_sizes=[256],
                             device=device, gates=Gates())
    report["training"] = result.report
    report["seconds"] = round(time.perf_counter() - began, 1)
    report["files"] = {"profile": str(profile_path), "selector": str(selector_path), "bundle": str(bundle_path)}
    return report
