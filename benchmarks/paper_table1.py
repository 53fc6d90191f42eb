"""The paper's Table 1 (and Table 3) on the MNIST sample: fine-tune the shipped ODE-Net with each
regulariser under one protocol, then select integrators on top of the unregularised and the
R_err models.

    python benchmarks/paper_table1.py                  # CPU: about 6 minutes on 2 cores
    python benchmarks/paper_table1.py --device cuda

Protocol (printed with the table): from the shipped weights, Adam, lr 1e-4, batch 128, 4 epochs
(10 % of the sample's 40 training epochs), DOPRI5 at rtol = atol = 1e-3 in float32 for training and
testing, 10 % of the 4000 training images held out for validation, the kept checkpoint being the
one with the smallest validation NFE within 0.3 points of the start. λ per regulariser below; R is
averaged over the batch's samples. Rows report test accuracy and DOPRI5's mean NFE on the 1000 test
images; the DISE rows profile the training images, train the selector and evaluate on the test
images exactly as `dise demo` does.

A control row rescales the shipped model exactly: the stem's last convolution and the ODE function's
last GroupNorm are multiplied by 0.01. Both the ODE function and the head start with a GroupNorm, so
the trajectory is the old one times 0.01 and the predictions are unchanged in exact arithmetic, but
DOPRI5's tolerance atol + rtol·|h| is now mostly atol, i.e. looser relative to the state. Any NFE
gain of a regulariser that shrinks the state has to be read against this row. The "h(0) RMS" column
shows each model's state scale, and "NFE, atol x RMS" solves with atol scaled by that RMS over the
shipped model's, a measure the exact rescaling leaves unchanged.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dise_cli.bundle import load_bundle  # noqa: E402
from dise_cli.datasets import Dataset  # noqa: E402
from dise_cli.demo import SAMPLE  # noqa: E402
from dise_cli.evaluation import Gates, evaluate_routed  # noqa: E402
from dise_cli.exporting import export_bundle  # noqa: E402
from dise_cli.finetuning import FinetuneSettings, finetune, state_rms, validate  # noqa: E402
from dise_cli.integrators import Dopri5  # noqa: E402
from dise_cli.judging import Judge  # noqa: E402
from dise_cli.pipeline import open_inputs, profile_model  # noqa: E402
from dise_cli.sources import ModelOptions, model_inputs, project_config  # noqa: E402
from dise_cli.selector_training import TrainSettings, train_selector  # noqa: E402

ROWS = [("No reg.", "none", 0.0), ("Kinetic energy reg.", "kinetic", 1.0), ("L1 reg.", "l1", 1e-5),
        ("L2 reg.", "l2", 1e-4), ("Our reg. (R_err)", "err", 10.0)]
EPOCHS, LR, BATCH = 4, 1e-4, 128
CONTROL_SCALE = 0.01
F_OUTPUT_KEYS = ("8.odefunc.norm3.weight", "8.odefunc.norm3.bias")     # f's last GroupNorm
CONTROL_KEYS = ("7.weight", "7.bias", *F_OUTPUT_KEYS)                  # and the stem's last conv: see above


def rescaled(state: dict, scale: float) -> dict:
    """The same network with its ODE state multiplied by ``scale`` (exact for this architecture)."""
    return {k: v * scale if k in CONTROL_KEYS else v.clone() for k, v in state.items()}


def measure_on_test(test, state: dict, device: torch.device, reference_rms: float) -> dict:
    """Test accuracy, DOPRI5's mean NFE and h(0)'s RMS; and the NFE with atol scaled by the state's
    RMS over the shipped model's, which an exact rescaling of the state leaves unchanged."""
    judge = Judge("classification")
    test.model.module.load_state_dict(state)
    base = Dopri5()
    metrics = validate(test.model, test.data, judge, base, device, 256)
    matched = Dopri5(rtol=base.rtol, atol=base.atol * metrics["state_rms"] / reference_rms)
    return {"accuracy": metrics["accuracy"], "nfe": metrics["nfe_mean"], "state_rms": metrics["state_rms"],
            "nfe_scale_matched": validate(test.model, test.data, judge, matched, device, 256)["nfe_mean"]}


def sample_options(device: str, model: str | None = None, data: str | None = None) -> ModelOptions:
    """The sample's project file, with another weights file in place of its model where given."""
    project = str(SAMPLE / "dise.yaml")
    return ModelOptions(model=model or project, config=project, data=data, device=device)


def opened(split: str, device: str, model: str | None = None):
    source = sample_options(device, model, str(SAMPLE / f"{split}.safetensors"))
    return open_inputs(model_inputs(source, project_config(source)))


def split_train(data, seed: int = 0):
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_val = len(data) // 10
    part = lambda rows, name: Dataset(x=data.x[rows], y=data.y[rows], t=None, name=name, sha256="")  # noqa: E731
    return part(perm[n_val:].sort().values, "train"), part(perm[:n_val].sort().values, "validation")


def dise_row(model_file: Path, device: str, folder: Path) -> dict:
    train = opened("train", device, str(model_file))
    run = profile_model(train, rows=torch.arange(len(train.data)), batch_size=256)
    result = train_selector(train, run.profile, "profile", TrainSettings())
    source = sample_options(device, str(model_file))
    inputs = model_inputs(source, project_config(source), with_data=False)
    bundle = folder / f"{model_file.stem}.dise"
    export_bundle(inputs, result.selector, "selector", bundle)
    test = opened("test", device, str(model_file))
    report = evaluate_routed(load_bundle(bundle, device=device), test.data, rows=torch.arange(len(test.data)),
                             batch_size=256, batch_sizes=[256], device=torch.device(device), gates=Gates(), repeats=1)
    return {"accuracy": report["dise"]["accuracy"], "nfe": report["dise"]["nfe_mean"], "share": report["dise"]["share"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    began = time.perf_counter()
    rows, models = [], {}
    shipped = opened("test", args.device)
    reference_rms = state_rms(shipped.model, shipped.data, device, 256)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, reg, lam in ROWS:
            train = opened("train", args.device)
            train_part, val_part = split_train(train.data)
            settings = FinetuneSettings(reg=reg, lam=lam, epochs=EPOCHS, lr=LR, batch_size=BATCH)
            result = finetune(train.model, train_part, val_part, settings, device, "classification")
            train.model.module.load_state_dict(result.state)
            metrics = measure_on_test(opened("test", args.device), result.state, device, reference_rms)
            path = folder / f"{reg}.safetensors"
            save_file({k: v.contiguous() for k, v in result.state.items()}, str(path))
            models[reg] = path
            rows.append({"model": label, "reg": reg, "lam": lam, "kept_epoch": result.kept_epoch, **metrics})
            print(f"{label}: test accuracy {100 * metrics['accuracy']:.2f}%, NFE {metrics['nfe']:.2f} "
                  f"(kept epoch {result.kept_epoch})", file=sys.stderr, flush=True)
        for label, reg in (("No reg. & DISE", "none"), ("Our reg. & DISE", "err")):
            d = dise_row(models[reg], args.device, folder)
            rows.append({"model": label, "reg": reg, **d})
        control = measure_on_test(shipped, rescaled(shipped.model.module.state_dict(), CONTROL_SCALE), device,
                                  reference_rms)
        rows.append({"model": f"Control: state x{CONTROL_SCALE:g}", "reg": "rescaled", "note": "no training", **control})
    print(f"Table 1 on the MNIST sample ({args.device}; {time.perf_counter() - began:.0f} s). Protocol: from the "
          f"shipped weights, Adam lr {LR:g}, batch {BATCH}, {EPOCHS} epochs, DOPRI5 rtol = atol = 1e-3 float32, "
          f"λ: " + ", ".join(f"{reg} {lam:g}" for _, reg, lam in ROWS if reg != "none"))
    print(f"{'Model':<22}{'Accuracy':>10}{'NFE':>8}{'h(0) RMS':>10}{'NFE, atol x RMS':>17}"
          f"   kept epoch / selection (Table 3)")
    for r in rows:
        extra = (f"   epoch {r['kept_epoch']}" if "kept_epoch" in r else f"   {r['note']}" if "note" in r else
                 "   " + ", ".join(f"{k.split(':')[0]} {100 * v:.1f}%" for k, v in r["share"].items()))
        scale = (f"{r['state_rms']:>10.3g}{r['nfe_scale_matched']:>17.2f}" if "state_rms" in r else f"{'':>27}")
        print(f"{r['model']:<22}{100 * r['accuracy']:>9.2f}%{r['nfe']:>8.2f}{scale}{extra}")
    print(f"'NFE, atol x RMS': DOPRI5 with atol = 1e-3 x (the model's h(0) RMS / the shipped model's, "
          f"{reference_rms:.3g}); an exact rescaling of the state leaves it unchanged")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
