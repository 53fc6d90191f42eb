"""``dise train-selector`` and ``dise export``: fit the selector on a profile, package the bundle."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from dise_cli.cli import options as opt
from dise_cli.cli.command import check_report_targets, command, with_options
from dise_cli.cli.options import setting
from dise_cli.files import writable_target
from dise_cli.output import Output
from dise_cli.selector_training import TrainSettings as TS
from dise_cli.sources import ModelOptions

SELECTOR_OUT = "selector.safetensors"
BUNDLE_OUT = "model.dise"


@command(
    "dise profile sample_models/mnist_odenet/dise.yaml --data sample_models/mnist_odenet/train.safetensors --out train.profile",
    "dise train-selector sample_models/mnist_odenet/dise.yaml --data sample_models/mnist_odenet/train.safetensors --profile train.profile --out selector.safetensors",
)
@with_options(ModelOptions)
def train_selector(
    source: ModelOptions,
    profile: Annotated[str, typer.Option("--profile", help="Profile file written by dise profile.", show_default=False)],
    out: Annotated[Optional[str], typer.Option("--out", help=f"Selector file to write [default: {SELECTOR_OUT}].")] = None,
    alpha: Annotated[Optional[float], setting(TS, "alpha", "--alpha", "Cost exponent α (paper Eq. 4).")] = None,
    M: Annotated[Optional[float], setting(TS, "M", "--M", "Cost of a wrong answer before ^α (raised if an NFE comes near it).")] = None,
    beta: Annotated[Optional[float], setting(TS, "beta", "--beta", "Regression: Γ threshold.", when_none="the baseline's mean Γ")] = None,
    selector_arch: Annotated[Optional[str], setting(TS, "selector_arch", "--selector-arch", "Selector network: auto (conv for [C, H, W] inputs, else mlp), conv, mlp, or table4 (the paper's Table 4: ReLU MLP 10-10-5-5, dropout at the 4th layer).")] = None,
    dropout: Annotated[Optional[float], setting(TS, "dropout", "--dropout", "Dropout of the table4 selector (the paper: 0 or 0.25).")] = None,
    cost: Annotated[Optional[str], setting(TS, "cost", "--cost", "Δ in the cost labels and what calibration minimises: nfe (the paper), or seconds (each sample's solve time from the profile's measured seconds per NFE; truer where candidates' steps carry different overhead).")] = None,
    inputs: Annotated[Optional[str], setting(TS, "inputs", "--inputs", "What the selector sees: h0 (the paper), euler (the decoded one-step Euler answer), euler_probs (its sorted class probabilities), or auto (euler_probs for classifiers, euler for other tasks, h0 where the decoder cannot run alone).")] = None,
    epochs: Annotated[Optional[int], setting(TS, "epochs", "--epochs", "Training epochs of the selector.")] = None,
    lr: Annotated[Optional[float], setting(TS, "lr", "--lr", "Learning rate of the selector.")] = None,
    val_split: Annotated[Optional[float], setting(TS, "val_split", "--val-split", "Share of the profiled samples held out for calibration and the report (the offsets need more held-out errors than the small selector needs training samples).")] = None,
    max_accuracy_drop: Annotated[Optional[float], setting(TS, "max_accuracy_drop", "--max-accuracy-drop", "Percentage points of accuracy the calibration may give up against the baseline.")] = None,
    max_error_increase: Annotated[Optional[float], setting(TS, "max_error_increase", "--max-error-increase", "Error budget (models judged by an error Γ): the routed mean Γ, against the labels or dise's reference solve, may exceed the baseline's by at most PCT percent; replaces --max-accuracy-drop.", when_none="none")] = None,
    max_deviation: Annotated[Optional[float], setting(TS, "max_deviation", "--max-deviation", "Error budget: the routed outputs' mean distance from the baseline's own outputs (the metric's units) at most D; replaces --max-accuracy-drop.", when_none="none")] = None,
    seed: Annotated[Optional[int], setting(TS, "seed", "--seed", "Seed for the split and the training.")] = None,
    json_path: opt.JsonOut = None,
    plot: opt.Plot = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Fit the selector v that predicts each candidate's cost (paper Eq. 4, 5) per input, then
    calibrate per-candidate offsets on a held-out split so that routed accuracy stays within
    --max-accuracy-drop of the baseline at the smallest mean NFE.
    """
    from dise_cli import api
    from dise_cli.render import render_training

    out_path = writable_target(out or SELECTOR_OUT, "--out")
    check_report_targets(json_path, plot)
    ui = Output(quiet=quiet, json_path=json_path)
    result = api.train_selector(source, profile, out=out_path, progress=ui.progress, alpha=alpha, M=M, beta=beta,
                                selector_arch=selector_arch, dropout=dropout, cost=cost, inputs=inputs, epochs=epochs, lr=lr, val_split=val_split,
                                max_accuracy_drop=max_accuracy_drop, max_error_increase=max_error_increase,
                                max_deviation=max_deviation, seed=seed)
    render_training(ui, result.report)
    if plot:
        from dise_cli.plots import plot_training
        plot_training(result.report, plot)
        ui.note(f"wrote {plot}")
    ui.note(f"wrote {out_path}")


@command(
    "dise export sample_models/mnist_odenet/dise.yaml --selector selector.safetensors --out mnist.dise",
    "dise export model.pt --arch mypkg.nets:build --selector selector.safetensors --profile train.profile",
)
@with_options(ModelOptions, exclude=("data", "data_factory", "x_key", "y_key"))
def export(
    source: ModelOptions,
    selector: Annotated[str, typer.Option("--selector", help="Selector file written by dise train-selector.", show_default=False)],
    out: Annotated[Optional[str], typer.Option("--out", help=f"Bundle to write [default: {BUNDLE_OUT}].")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", help="The profile the selector was trained on, to check that they belong together.")] = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Package model and selector into one .dise bundle: a manifest, safetensors weights, the sha256
    of every member, and encoder, ODE function and decoder as torch.export programs where they
    export (else the manifest names the --arch factory). No pickle. Exports on the CPU unless
    --device (or the config's device) says otherwise. Load it in Python with dise_cli.load("model.dise").
    """
    from dise_cli import api

    ui = Output(quiet=quiet)
    out_path = out or BUNDLE_OUT
    info = api.export(source, selector, out_path, profile=profile)
    if info.programs == "split":
        ui.note("exported as torch.export programs: encoder, ODE function and decoder")
    elif info.programs == "whole":
        ui.note("exported as torch.export programs: the model's forward, its solve left to dise, and the ODE function")
    else:
        from dise_cli.sources import model_inputs, project_config
        arch = model_inputs(source, project_config(source), with_data=False).model.arch
        ui.note(f"no programs ({info.reason}); the bundle rebuilds the model with {arch}")
    if info.rows_kept:
        ui.note(f"the model rejects noise shaped like its data, so the bundle keeps {info.rows_kept} rows of the "
                f"selector's training data to read the model with")
    ui.note(f"wrote {out_path}")
