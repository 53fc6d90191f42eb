"""``dise evaluate`` and ``dise run``: a bundle measured on data, and offline inference with it."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from dise_cli import distributed
from dise_cli.cli import options as opt
from dise_cli.cli.command import check_report_targets, command, with_options
from dise_cli.cli.options import setting
from dise_cli.errors import UsageError
from dise_cli.evaluation import EvaluateSettings as ES
from dise_cli.offline import RunSettings as RS
from dise_cli.output import Output
from dise_cli.render import short_name
from dise_cli.sources import DataOptions

PREDICTIONS_OUT = "predictions.safetensors"


@command(
    "dise evaluate mnist.dise --data sample_models/mnist_odenet/test.safetensors",
    "dise evaluate mnist.dise --data sample_models/mnist_odenet/test.safetensors --max-accuracy-drop 0.3 --min-nfe-reduction 0.8 --json -",
    ranks=True,
)
@with_options(DataOptions)
def evaluate(
    bundle: opt.BundleArg,
    source: DataOptions,
    json_path: opt.JsonOut = None,
    plot: opt.Plot = None,
    batch_sizes: Annotated[Optional[str], setting(ES, "batch_sizes", "--batch-sizes", "Batch sizes to time, comma-separated.")] = None,
    batch_size: Annotated[Optional[int], setting(ES, "batch_size", "--batch-size", "Samples per batch for the accuracy and NFE figures.")] = None,
    max_accuracy_drop: Annotated[Optional[float], setting(ES, "max_accuracy_drop", "--max-accuracy-drop", "Gate: percentage points of accuracy DISE may lose against the baseline (exit 1 if more).", when_none="no gate")] = None,
    min_nfe_reduction: Annotated[Optional[float], setting(ES, "min_nfe_reduction", "--min-nfe-reduction", "Gate: the share of the baseline's mean NFE DISE must save, e.g. 0.5 (exit 1 if less).", when_none="no gate")] = None,
    max_nfe: Annotated[Optional[float], setting(ES, "max_nfe", "--max-nfe", "Gate: DISE's mean NFE, selector included, at most this (exit 1 if more).", when_none="no gate")] = None,
    max_error_increase: Annotated[Optional[float], setting(ES, "max_error_increase", "--max-error-increase", "Gate (models judged by an error Γ): DISE's mean Γ at most PCT percent over the baseline's (exit 1 if more).", when_none="no gate")] = None,
    max_deviation: Annotated[Optional[float], setting(ES, "max_deviation", "--max-deviation", "Gate: DISE's outputs' mean distance from the baseline's, in the metric's units, at most D (exit 1 if more).", when_none="no gate")] = None,
    figure_data: Annotated[Optional[str], setting(ES, "figure_data", "--figure-data", opt.FIGURE_DATA_HELP, when_none="none")] = None,
    limit: Annotated[Optional[int], setting(ES, "limit", "--limit", "Evaluate N samples drawn with --seed.", when_none="all")] = None,
    seed: Annotated[Optional[int], setting(ES, "seed", "--seed", "Seed for drawing samples.")] = None,
    repeats: Annotated[Optional[int], setting(ES, "repeats", "--repeats", "Timing rounds per batch size (the median is reported).")] = None,
    time_major: Annotated[Optional[bool], setting(ES, "time_major", "--time-major/--no-time-major", "Targets are [T, N, ...].",
                                                  when_none="from the shapes", show_default=False)] = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Measure a bundle on data: accuracy (or error), mean NFE with the selector's own cost, the
    share of each integrator, next to DOPRI5-only, the best single candidate and the oracle on the
    same data, and wall-clock time against DOPRI5-only at each batch size. A gate not met exits 1.
    """
    from dise_cli import api
    from dise_cli.errors import GateFailed
    from dise_cli.render import render_evaluation

    sizes = None if batch_sizes is None else _int_list(batch_sizes, "--batch-sizes")
    check_report_targets(json_path, plot)
    ui = Output(quiet=quiet or distributed.secondary(), json_path=json_path)
    report = api.evaluate(bundle, source, progress=ui.progress, batch_sizes=sizes, batch_size=batch_size,
                          max_accuracy_drop=max_accuracy_drop, min_nfe_reduction=min_nfe_reduction, max_nfe=max_nfe,
                          max_error_increase=max_error_increase, max_deviation=max_deviation,
                          figure_data=figure_data, limit=limit, seed=seed, repeats=repeats, time_major=time_major)
    if report is None:                 # a torchrun rank other than 0: rank 0 reports
        return
    render_evaluation(ui, report)
    if plot:
        from dise_cli.plots import plot_evaluation
        plot_evaluation(report, plot)
        ui.note(f"wrote {plot}")
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        raise GateFailed("gate not met: " + "; ".join(f"{g['gate']} {g['value']} (threshold {g['threshold']})"
                                                      for g in failed))


@command(
    "dise run mnist.dise --data sample_models/mnist_odenet/test.safetensors --out predictions.safetensors",
    ranks=True,
)
@with_options(DataOptions, exclude=("y_key",))
def run(
    bundle: opt.BundleArg,
    source: DataOptions,
    out: Annotated[Optional[str], typer.Option("--out", help=f"Predictions file to write [default: {PREDICTIONS_OUT}].")] = None,
    batch_size: Annotated[Optional[int], setting(RS, "batch_size", "--batch-size", "Samples per batch.")] = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Offline inference over a whole dataset: every sample's integrator is chosen first, then each
    integrator runs on all of its samples in full batches. Writes outputs, integrator, NFE and
    fallback flags per sample as safetensors.
    """
    from dise_cli import api

    out_path = out or PREDICTIONS_OUT
    ui = Output(quiet=quiet or distributed.secondary())
    result = api.run(bundle, source, out=out_path, progress=ui.progress, batch_size=batch_size)
    if result is None:                 # a torchrun rank other than 0: rank 0 reports and writes
        return
    shares = ", ".join(f"{short_name(c, result.candidates)} {100 * float((result.integrator == i).double().mean()):.1f}%"
                       for i, c in enumerate(result.candidates))
    ranks = f" on {result.world_size} processes" if result.world_size > 1 else ""
    ui.line(f"{len(result.nfe)} samples, mean NFE {float(result.nfe.double().mean()):.2f} ({shares}), "
            f"{int(result.fallback.sum())} fallbacks, {result.seconds:.2f} s{ranks}")
    ui.note(f"wrote {out_path}")


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag}: '{text}' is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{flag}: give positive batch sizes, e.g. 1,64,256")
    return values
