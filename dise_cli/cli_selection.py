"""The selection commands: train-selector, export, evaluate, run and demo (registered on ``cli.app``)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dise_cli import options as opt
from dise_cli.cli import DEFAULT_BATCH_SIZE, DEFAULT_SELECTOR_OUT, app, command
from dise_cli.config import pick, positive_int
from dise_cli.errors import UsageError
from dise_cli.files import writable_target
from dise_cli.output import Output
from dise_cli.pipeline import make_inputs, open_inputs, read_config
from dise_cli.profiling import select_rows
from dise_cli.render import render_training


@app.command("train-selector")
@command
def train_selector_cmd(
    model: opt.ModelArg,
    profile: Annotated[str, typer.Option("--profile", help="Profile file written by dise profile.")],
    data: opt.Data = None,
    out: Annotated[Optional[str], typer.Option("--out", help=f"Selector file to write [default: {DEFAULT_SELECTOR_OUT}].")] = None,
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="Cost exponent α [default: 0.3].")] = None,
    big_m: Annotated[Optional[float], typer.Option("--M", help="Cost of a wrong answer before ^α [default: 1000; raised if an NFE comes near it].")] = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="Regression: Γ threshold [default: the baseline's mean Γ].")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="Selector network: auto, conv or mlp [default: auto].")] = None,
    inputs: Annotated[Optional[str], typer.Option("--inputs", help="What the selector sees: h0 (the paper), euler (the decoded one-step Euler answer) or euler_probs (its sorted class probabilities) [default: euler_probs for classifiers, euler for other tasks, h0 where the decoder cannot run alone].")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Training epochs [default: 40].")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate [default: 3e-3].")] = None,
    val_split: Annotated[Optional[float], typer.Option("--val-split", help="Share of the profiled samples held out for calibration and the report [default: 0.4: the offsets need more held-out errors than the small selector needs training samples].")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Percentage points of accuracy the calibration may give up against the baseline [default: 0.3].")] = None,
    seed: opt.Seed = None,
    device: opt.Device = None,
    json_path: opt.JsonOut = None,
    model_arch: Annotated[Optional[str], typer.Option("--model-arch", help="package.module:factory that builds the model for a state dict (as --arch of the other commands).")] = None,
    trust_pickle: opt.TrustPickle = None,
    code_path: opt.CodePath = None,
    ode_block: opt.OdeBlock = None,
    solve: opt.Solve = None,
    t_span: opt.TSpan = None,
    data_factory: opt.DataFactory = None,
    x_key: opt.XKey = None,
    y_key: opt.YKey = None,
    config: opt.Config = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Fit the selector v that predicts each candidate's cost (paper Eq. 4, 5) per input, then
    calibrate per-candidate offsets on a held-out split so that routed accuracy stays within
    --max-accuracy-drop of the baseline at the smallest mean NFE.

    \\b
    Examples:
      dise profile sample_models/mnist_odenet/dise.yaml --data sample_models/mnist_odenet/train.safetensors --out train.profile
      dise train-selector sample_models/mnist_odenet/dise.yaml --data sample_models/mnist_odenet/train.safetensors \\\\
          --profile train.profile --out selector.safetensors
    """
    from dise_cli.profiles import read_profile
    from dise_cli.selector import write_selector
    from dise_cli.selector_training import TrainSettings, train_selector
    from dise_cli.files import sha256_file

    cfg, model_path = read_config(model, config)
    given = {"alpha": alpha, "M": big_m, "beta": beta, "arch": arch, "inputs": inputs, "lr": lr,
             "epochs": None if epochs is None else positive_int(epochs, "--epochs"), "val_split": val_split,
             "seed": pick(seed, cfg, "seed"), "max_accuracy_drop": max_accuracy_drop}
    settings = TrainSettings(**{k: v for k, v in given.items() if v is not None})   # the rest: TrainSettings' defaults
    if not 0 < settings.val_split < 1:
        raise UsageError(f"--val-split: must be between 0 and 1, got {settings.val_split}")
    if not settings.lr > 0:
        raise UsageError(f"--lr: must be > 0, got {settings.lr}")
    out_path = writable_target(out or DEFAULT_SELECTOR_OUT, "--out")
    if json_path not in (None, "-"):
        writable_target(json_path, "--json")
    prof = read_profile(profile)
    inputs_ = make_inputs(model, cfg, model_path, arch=model_arch, trust_pickle=trust_pickle, code_path=code_path,
                          ode_block=ode_block, t_span=t_span, data=data, data_factory=data_factory,
                          x_key=x_key, y_key=y_key, device=device, solve=solve)
    ui = Output(quiet=quiet, json_path=json_path)
    opened = open_inputs(inputs_, candidates=",".join(prof.candidates))
    with ui.progress(settings.epochs, "training") as advance:
        result = train_selector(opened, prof, profile, settings, progress=advance)
    result.selector.meta["profile_sha256"] = sha256_file(profile)
    write_selector(result.selector, out_path)
    render_training(ui, result.report)
    ui.note(f"wrote {out_path}")


@app.command()
@command
def export(
    model: opt.ModelArg,
    selector: Annotated[str, typer.Option("--selector", help="Selector file written by dise train-selector.")],
    out: Annotated[Optional[str], typer.Option("--out", help="Bundle to write [default: model.dise].")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", help="The profile the selector was trained on, to check that they belong together.")] = None,
    arch: opt.Arch = None,
    trust_pickle: opt.TrustPickle = None,
    code_path: opt.CodePath = None,
    ode_block: opt.OdeBlock = None,
    solve: opt.Solve = None,
    t_span: opt.TSpan = None,
    device: opt.Device = None,
    config: opt.Config = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Package model and selector into one .dise bundle: a manifest, safetensors weights, the sha256
    of every member, and encoder, ODE function and decoder as torch.export programs where they
    export (else the manifest names the --arch factory). No pickle. Load it in Python with
    dise_cli.load("model.dise").

    \\b
    Examples:
      dise export sample_models/mnist_odenet/dise.yaml --selector selector.safetensors --out mnist.dise
    """
    from dise_cli.exporting import check_selector_profile, export_bundle
    from dise_cli.selector import read_selector

    cfg, model_path = read_config(model, config)
    out_path = writable_target(out or "model.dise", "--out")
    sel = read_selector(selector)
    if profile is not None:
        check_selector_profile(sel, selector, profile)
    inputs = make_inputs(model, cfg, model_path, arch=arch, trust_pickle=trust_pickle, code_path=code_path,
                         ode_block=ode_block, t_span=t_span, data=None, data_factory=None, x_key=None,
                         y_key=None, device=device or "cpu", solve=solve)
    ui = Output(quiet=quiet)
    info = export_bundle(inputs, sel, selector, out_path)
    if info.programs == "split":
        ui.note("exported as torch.export programs: encoder, ODE function and decoder")
    elif info.programs == "whole":
        ui.note("exported as torch.export programs: the model's forward, its solve left to dise, and the ODE function")
    else:
        ui.note(f"no programs ({info.reason}); the bundle rebuilds the model with {inputs.model.arch}")
    ui.note(f"wrote {out_path}")


def _bundle_and_data(bundle: str, data: str | None, data_factory: str | None, x_key: str | None,
                     y_key: str | None, code_path: list[str] | None, device: str | None):
    from dise_cli.bundle import load_bundle
    from dise_cli.config import resolve_device
    from dise_cli.datasets import DataSpec, load_data
    dev = resolve_device(device)
    if data is None and data_factory is None:
        raise UsageError("--data: this command needs data; pass --data FILE or --data-factory package.module:fn")
    if data is not None and data_factory is not None:
        raise UsageError("--data and --data-factory: give one")
    paths = tuple(code_path or ())
    dataset = load_data(DataSpec(path=Path(data) if data else None, factory=data_factory, x_key=x_key, y_key=y_key,
                                 code_path=paths))
    return load_bundle(bundle, device=dev, code_path=paths), dataset, dev


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag}: '{text}' is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{flag}: give positive batch sizes, e.g. 1,64,256")
    return values


@app.command()
@command
def evaluate(
    bundle: Annotated[str, typer.Argument(metavar="BUNDLE", help="A .dise bundle written by dise export.")],
    data: opt.Data = None,
    json_path: opt.JsonOut = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Batch sizes to time, comma-separated.")] = "1,64,256",
    batch_size: opt.BatchSize = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Gate: percentage points of accuracy DISE may lose against the baseline (exit 1 if more).")] = None,
    min_nfe_reduction: Annotated[Optional[float], typer.Option("--min-nfe-reduction", help="Gate: the share of the baseline's mean NFE DISE must save, e.g. 0.5 (exit 1 if less).")] = None,
    max_nfe: Annotated[Optional[float], typer.Option("--max-nfe", help="Gate: DISE's mean NFE, selector included, at most this (exit 1 if more).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate N samples drawn with --seed [default: all].")] = None,
    seed: opt.Seed = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timing rounds per batch size (median).")] = 5,
    device: opt.Device = None,
    code_path: opt.CodePath = None,
    data_factory: opt.DataFactory = None,
    x_key: opt.XKey = None,
    y_key: opt.YKey = None,
    time_major: Annotated[Optional[bool], typer.Option("--time-major/--no-time-major", show_default=False, help="Targets are [T, N, ...].")] = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Measure a bundle on data: accuracy (or error), mean NFE with the selector's own cost, the
    share of each integrator, next to DOPRI5-only, the best single candidate and the oracle on the
    same data, and wall-clock time against DOPRI5-only at each batch size. A gate not met exits 1.

    \\b
    Examples:
      dise evaluate mnist.dise --data sample_models/mnist_odenet/test.safetensors
      dise evaluate mnist.dise --data test.safetensors --max-accuracy-drop 0.3 --min-nfe-reduction 0.8 --json -
    """
    from dise_cli.errors import GateFailed
    from dise_cli.evaluation import Gates, evaluate_routed
    from dise_cli.render import render_evaluation

    sizes = _int_list(batch_sizes, "--batch-sizes")
    size = positive_int(batch_size if batch_size is not None else DEFAULT_BATCH_SIZE, "--batch-size")
    if json_path not in (None, "-"):
        writable_target(json_path, "--json")
    routed, dataset, dev = _bundle_and_data(bundle, data, data_factory, x_key, y_key, code_path, device)
    rows = select_rows(len(dataset), None if limit is None else positive_int(limit, "--limit"), int(seed or 0))
    ui = Output(quiet=quiet, json_path=json_path)
    with ui.progress(len(rows), "evaluating") as advance:
        report = evaluate_routed(routed, dataset, rows=rows, batch_size=size, batch_sizes=sizes, device=dev,
                                 gates=Gates(max_accuracy_drop, min_nfe_reduction, max_nfe), time_major=time_major,
                                 repeats=positive_int(repeats, "--repeats"), progress=advance)
    render_evaluation(ui, report)
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        raise GateFailed("gate not met: " + "; ".join(f"{g['gate']} {g['value']} (threshold {g['threshold']})"
                                                      for g in failed))


@app.command()
@command
def run(
    bundle: Annotated[str, typer.Argument(metavar="BUNDLE", help="A .dise bundle written by dise export.")],
    data: opt.Data = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Predictions file to write [default: predictions.safetensors].")] = None,
    batch_size: opt.BatchSize = None,
    device: opt.Device = None,
    code_path: opt.CodePath = None,
    data_factory: opt.DataFactory = None,
    x_key: opt.XKey = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Offline inference over a whole dataset: every sample's integrator is chosen first, then each
    integrator runs on all of its samples in full batches. Writes outputs, integrator, NFE and
    fallback flags per sample as safetensors.

    \\b
    Examples:
      dise run mnist.dise --data sample_models/mnist_odenet/test.safetensors --out predictions.safetensors
    """
    from dise_cli.offline import run_offline, write_predictions

    size = positive_int(batch_size if batch_size is not None else DEFAULT_BATCH_SIZE, "--batch-size")
    out_path = writable_target(out or "predictions.safetensors", "--out")
    routed, dataset, dev = _bundle_and_data(bundle, data, data_factory, x_key, None, code_path, device)
    ui = Output(quiet=quiet)
    with ui.progress(2 * len(dataset), "running") as advance:
        result = run_offline(routed, dataset, batch_size=size, device=dev, progress=advance)
    write_predictions(result, routed, out_path)
    shares = ", ".join(f"{c.split(':')[0]} {100 * float((result.integrator == i).double().mean()):.1f}%"
                       for i, c in enumerate(routed.selector.candidates))
    ui.line(f"{len(dataset)} samples, mean NFE {float(result.nfe.double().mean()):.2f} ({shares}), "
            f"{int(result.fallback.sum())} fallbacks, {result.seconds:.2f} s")
    ui.note(f"wrote {out_path}")


@app.command()
@command
def demo(
    out: Annotated[Optional[str], typer.Option("--out", help="Folder for the profile, selector and bundle [default: a temporary folder].")] = None,
    train_limit: Annotated[Optional[int], typer.Option("--train-limit", help="Profile only N training images (faster) [default: all 4000].")] = None,
    device: opt.Device = None,
    json_path: opt.JsonOut = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """The whole pipeline on the bundled MNIST ODE-Net: profile its training split, train the
    selector, export the bundle, evaluate on its test split, and print the paper's table
    (Model | Accuracy | NFE | time per batch). About a minute on 2 CPU cores.

    \\b
    Examples:
      dise demo
      dise demo --out demo_out --json demo.json
    """
    import tempfile
    from dise_cli.config import resolve_device
    from dise_cli.demo import run_demo
    from dise_cli.render import render_demo

    dev = resolve_device(device)
    ui = Output(quiet=quiet, json_path=json_path)
    if out is not None:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out: '{folder}' is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        report = run_demo(folder, dev, train_limit, note=ui.note)
    else:
        with tempfile.TemporaryDirectory(prefix="dise-demo-") as tmp:
            report = run_demo(Path(tmp), dev, train_limit, note=ui.note)
        report["files"] = {}          # gone with the temporary folder
    render_demo(ui, report)
