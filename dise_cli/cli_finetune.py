"""``dise finetune`` (registered on ``cli.app``)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from dise_cli import options as opt
from dise_cli.cli import app, command
from dise_cli.config import pick, positive_int
from dise_cli.errors import UsageError
from dise_cli.files import writable_target
from dise_cli.output import Output
from dise_cli.pipeline import make_inputs, open_inputs, read_config


MIN_SAMPLES_IN_DROP = 5   # fewer validation samples than this within --max-accuracy-drop: say so


@app.command()
@command
def finetune(
    model: opt.ModelArg,
    data: opt.Data = None,
    reg: Annotated[str, typer.Option("--reg", help="Regulariser: err (R_err, the paper's), err-dt (ERNODE's Σ err·|dt|), kinetic, l1, l2, or none.")] = "err",
    lam: Annotated[float, typer.Option("--lam", help="λ in L_task + λR.")] = 1.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 4,
    out: Annotated[Optional[str], typer.Option("--out", help="The fine-tuned model (same format as MODEL; a pickled module comes back as a state dict).")] = None,
    val_data: Annotated[Optional[str], typer.Option("--val-data", help="Validation data [default: 10 % of --data, held out with --seed].")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 3e-4,
    schedule: Annotated[str, typer.Option("--schedule", help="Learning rate schedule: constant, or cosine (decays to 0 over all the steps).")] = "constant",
    batch_size: opt.BatchSize = None,
    max_accuracy_drop: Annotated[float, typer.Option("--max-accuracy-drop", help="Keep only checkpoints within this many percentage points of the starting model's validation accuracy.")] = 0.3,
    loss: Annotated[Optional[str], typer.Option("--loss", help="package.module:fn(outputs, targets) -> loss [default: cross-entropy, or MSE for regression].")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="classification or regression [default: from the labels].")] = None,
    seed: opt.Seed = None,
    device: opt.Device = None,
    json_path: opt.JsonOut = None,
    arch: opt.Arch = None,
    trust_pickle: opt.TrustPickle = None,
    code_path: opt.CodePath = None,
    ode_block: opt.OdeBlock = None,
    solve: opt.Solve = None,
    t_span: opt.TSpan = None,
    x_key: opt.XKey = None,
    y_key: opt.YKey = None,
    config: opt.Config = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Fine-tune the model with L_task + λR (paper Eq. 3) so that DOPRI5 needs fewer steps, keeping
    the checkpoint with the smallest validation NFE within --max-accuracy-drop of the start.

    \\b
    Examples:
      dise finetune sample_models/mnist_odenet/dise.yaml --data sample_models/mnist_odenet/train.safetensors \\\\
          --reg err --lam 10 --epochs 4 --out mnist_err.safetensors
    """
    from dise_cli.finetuning import FinetuneSettings, finetune as run_finetune
    from dise_cli.model_files import output_for, save_model
    from dise_cli.render import render_finetune

    cfg, model_path = read_config(model, config)
    settings = FinetuneSettings(reg=reg, lam=lam, epochs=positive_int(epochs, "--epochs"), lr=lr,
                                batch_size=positive_int(batch_size if batch_size is not None else 128, "--batch-size"),
                                seed=int(pick(seed, cfg, "seed", 0)), max_accuracy_drop=max_accuracy_drop, loss=loss,
                                schedule=schedule)
    settings.check()
    if loss:
        from dise_cli.imports import import_object
        import_object(loss, "--loss")
    if json_path not in (None, "-"):
        writable_target(json_path, "--json")
    inputs = make_inputs(model, cfg, model_path, arch=arch, trust_pickle=trust_pickle, code_path=code_path,
                         ode_block=ode_block, t_span=t_span, data=data, data_factory=None, x_key=x_key,
                         y_key=y_key, device=device, solve=solve)
    out_path, note = output_for(inputs.model, out)
    writable_target(out_path, "--out")
    ui = Output(quiet=quiet, json_path=json_path)
    opened = open_inputs(inputs)
    if opened.data.per_sample_grid:
        raise UsageError(f"data '{opened.data.name}': fine-tuning on a time grid per sample is not supported yet")
    train_data, val = _train_and_validation(opened.data, val_data, x_key, y_key, settings.seed)
    chosen_task = task or ("regression" if train_data.y is not None and train_data.y.is_floating_point() else "classification")
    with ui.progress(settings.epochs * len(train_data), f"fine-tuning ({reg}, λ={lam:g})") as advance:
        result = run_finetune(opened.model, train_data, val, settings, opened.device, chosen_task,
                              progress=lambda s: advance(s["advance"]), solver=_adaptive_baseline(opened))
    save_model(opened, result.state, out_path)
    if note:
        ui.note(note)
    render_finetune(ui, result, settings)
    resolvable = len(val) * settings.max_accuracy_drop / 100
    if resolvable < MIN_SAMPLES_IN_DROP:
        ui.note(f"the validation data has {len(val)} samples, so --max-accuracy-drop {settings.max_accuracy_drop:g} "
                f"is {resolvable:.2g} of them: the checkpoint check is noisy; pass a larger --val-data")
    ui.note(f"wrote {out_path}")


def _adaptive_baseline(opened):
    """The model's own solver where it is adaptive (fine-tuning trains through its error estimates);
    else DOPRI5 at the settings' tolerances."""
    from dise_cli.integrators import EmbeddedRK
    base = opened.candidates.integrators[opened.candidates.baseline]
    return base if isinstance(base, EmbeddedRK) else None


def _train_and_validation(data, val_path, x_key, y_key, seed):
    from dise_cli.datasets import Dataset, DataSpec, load_data
    if val_path:
        return data, load_data(DataSpec(path=Path(val_path), x_key=x_key, y_key=y_key))
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, len(data) // 10)
    pick_rows = lambda rows, name: Dataset(x=data.x[rows], y=None if data.y is None else data.y[rows],  # noqa: E731
                                           t=data.t, name=name, sha256=data.sha256)
    return (pick_rows(perm[n_val:].sort().values, data.name),
            pick_rows(perm[:n_val].sort().values, f"{data.name} (10 % held out)"))
