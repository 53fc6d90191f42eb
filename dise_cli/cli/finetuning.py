"""``dise finetune``: the model trained further with L_task + λR so that its solver needs fewer steps."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from dise_cli.cli import options as opt
from dise_cli.cli.command import check_report_targets, command, with_options
from dise_cli.cli.options import setting
from dise_cli.finetuning import REGULARISERS, SCHEDULES
from dise_cli.finetuning import FinetuneSettings as FS
from dise_cli.output import Output
from dise_cli.sources import ModelOptions

MIN_SAMPLES_IN_DROP = 5   # fewer validation samples than this within --max-accuracy-drop: say so


@command(
    "dise finetune sample_models/mnist_odenet/dise.yaml --data sample_models/mnist_odenet/train.safetensors --reg err --lam 10 --epochs 4 --out mnist_err.safetensors",
)
@with_options(ModelOptions)
def finetune(
    source: ModelOptions,
    reg: Annotated[Optional[str], setting(FS, "reg", "--reg", f"Regulariser: {', '.join(REGULARISERS)} (err: R_err, the paper's; err-dt: ERNODE's Σ err·|dt|).")] = None,
    lam: Annotated[Optional[float], setting(FS, "lam", "--lam", "λ in L_task + λR.")] = None,
    epochs: Annotated[Optional[int], setting(FS, "epochs", "--epochs", "Training epochs.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="The fine-tuned model (same format as MODEL; a pickled module comes back as a state dict) [default: beside MODEL, with a .finetuned infix].")] = None,
    val_data: Annotated[Optional[str], typer.Option("--val-data", help="Validation data [default: 10 % of --data, held out with --seed].")] = None,
    lr: Annotated[Optional[float], setting(FS, "lr", "--lr", "Adam learning rate.")] = None,
    schedule: Annotated[Optional[str], setting(FS, "schedule", "--schedule", f"Learning rate schedule: {' or '.join(SCHEDULES)} (cosine decays to 0 over all the steps).")] = None,
    batch_size: Annotated[Optional[int], setting(FS, "batch_size", "--batch-size", "Samples per training batch.")] = None,
    max_accuracy_drop: Annotated[Optional[float], setting(FS, "max_accuracy_drop", "--max-accuracy-drop", "Keep only checkpoints within this many percentage points of the starting model's validation accuracy.")] = None,
    loss: Annotated[Optional[str], setting(FS, "loss", "--loss", "package.module:fn(outputs, targets) -> loss, or nll for a density whose output is log p(x) (maximum likelihood; no labels needed).", when_none="cross-entropy, or MSE for regression")] = None,
    max_nlp_increase: Annotated[Optional[float], setting(FS, "max_nlp_increase", "--max-nlp-increase", "With --loss nll: keep only checkpoints whose validation NLP is within this many nats of the start's.")] = None,
    task: Annotated[Optional[str], setting(FS, "task", "--task", "classification or regression.", when_none="from the labels")] = None,
    seed: Annotated[Optional[int], setting(FS, "seed", "--seed", "Seed for the held-out split and the batch order.")] = None,
    json_path: opt.JsonOut = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Fine-tune the model with L_task + λR (the paper's equation 3) so that its adaptive solver needs fewer
    steps, keeping the checkpoint with the smallest validation NFE within --max-accuracy-drop of the start.
    """
    from dise_cli import api
    from dise_cli.render import render_finetune

    check_report_targets(json_path, None)
    ui = Output(quiet=quiet, json_path=json_path)
    result = api.finetune(source, out=out, val_data=val_data, note=ui.note, progress=ui.progress, reg=reg, lam=lam,
                          epochs=epochs, lr=lr, schedule=schedule, batch_size=batch_size,
                          max_accuracy_drop=max_accuracy_drop, max_nlp_increase=max_nlp_increase, loss=loss, task=task,
                          seed=seed)
    settings = result.settings
    render_finetune(ui, result, settings)
    resolvable = result.validation_size * settings.max_accuracy_drop / 100
    if settings.loss != "nll" and resolvable < MIN_SAMPLES_IN_DROP:
        ui.note(f"the validation data has {result.validation_size} samples, so --max-accuracy-drop "
                f"{settings.max_accuracy_drop:g} is {resolvable:.2g} of them: the checkpoint check is noisy; "
                f"pass a larger --val-data")
    ui.note(f"wrote {result.path}")
