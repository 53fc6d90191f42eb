"""``dise profile`` and ``dise inspect``: what dise makes of a model, and every candidate on every sample."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from dise_cli import distributed
from dise_cli.cli import options as opt
from dise_cli.cli.command import check_report_targets, command, with_options
from dise_cli.cli.options import setting
from dise_cli.files import writable_target
from dise_cli.output import Output
from dise_cli.pipeline import ProfileSettings as PS
from dise_cli.sources import ModelOptions

PROFILE_OUT = "profile.safetensors"
CANDIDATES_HELP = "Integrators to profile, comma-separated specs such as rk4:steps=2 or dopri5:rtol=1e-4,atol=1e-4"


@command(
    "dise profile sample_models/mnist_odenet/dise.yaml",
    "dise profile sample_models/mnist_odenet/dise.yaml --limit 200 --json report.json",
    "dise profile model.pt --arch mypkg.nets:build --data test.npz --candidates \"euler:steps=2,rk4:steps=1,dopri5:rtol=1e-4,atol=1e-4\"",
    "dise profile sample_models/mnist_odenet/dise.yaml --shard 1/4 --out part1.profile.safetensors",
    ranks=True,
)
@with_options(ModelOptions)
def profile(
    source: ModelOptions,
    candidates: Annotated[Optional[str], setting(PS, "candidates", "--candidates", CANDIDATES_HELP,
                                                 when_none="euler:steps=1,rk4:steps=1 and the model's own solver, the baseline")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help=f"Profile file to write [default: {PROFILE_OUT}].")] = None,
    json_path: opt.JsonOut = None,
    plot: opt.Plot = None,
    batch_size: Annotated[Optional[int], setting(PS, "batch_size", "--batch-size", "Samples per batch.")] = None,
    limit: Annotated[Optional[int], setting(PS, "limit", "--limit", "Profile N samples drawn with --seed.", when_none="all")] = None,
    seed: Annotated[Optional[int], setting(PS, "seed", "--seed", "Seed for drawing samples and for the reference solve.")] = None,
    task: Annotated[Optional[str], setting(PS, "task", "--task", "classification or regression.", when_none="from the labels")] = None,
    metric: Annotated[Optional[str], setting(PS, "metric", "--metric", "Error Γ per sample: mse, mae, l2 (the Euclidean distance, for a sampler's output) or package.module:fn; implies --task regression.", when_none="mse")] = None,
    figure: Annotated[Optional[str], setting(PS, "figure", "--figure", "A task figure beside Γ for models without labels: nlp (the output is log p(x): mean negative log-likelihood and bits per dimension) or energy (the output is a sample: energy distance to the reference solve's samples).", when_none="none")] = None,
    figure_data: Annotated[Optional[str], setting(PS, "figure_data", "--figure-data", opt.FIGURE_DATA_HELP, when_none="none")] = None,
    shard: Annotated[Optional[str], setting(PS, "shard", "--shard", "K/N: profile only the K-th of N disjoint shards of the samples (a job array's task); dise merge joins them. Under torchrun each rank takes its shard by itself.", when_none="all samples")] = None,
    time_major: Annotated[Optional[bool], setting(PS, "time_major", "--time-major/--no-time-major",
                                                  "Targets are [T, N, ...] (as odeint returns).", when_none="from the shapes",
                                                  show_default=False)] = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Run every candidate integrator on every sample: accuracy or error, NFE, failures, time.

    Writes the per-sample profile that train-selector reads, and prints a table with the oracle
    (the cheapest right integrator per sample) and the best single integrator. Under torchrun
    (torchrun --nproc-per-node N -m dise_cli profile ...) each rank profiles a shard on its own
    device and rank 0 writes the one profile.
    """
    from dise_cli import api
    from dise_cli.render import render_profile

    out_path = writable_target(out or PROFILE_OUT, "--out")
    check_report_targets(json_path, plot)
    ui = Output(quiet=quiet or distributed.secondary(), json_path=json_path)
    run = api.profile(source, out=out_path, note=ui.note, progress=ui.progress, candidates=candidates,
                      batch_size=batch_size, limit=limit, seed=seed, task=task, metric=metric, time_major=time_major,
                      figure=figure, figure_data=figure_data, shard=shard)
    if run is None:                    # a torchrun rank other than 0: rank 0 reports and writes
        return
    report = render_profile(ui, run)
    if plot and run.profile.n_samples:
        from dise_cli.plots import plot_profile
        plot_profile(run, plot, report=report)
        ui.note(f"wrote {plot}")
    ui.note(f"wrote {out_path}")


@command(
    "dise inspect sample_models/mnist_odenet/dise.yaml",
    "dise inspect model.pt --arch mypkg.nets:build --data test.npz",
)
@with_options(ModelOptions)
def inspect(
    source: ModelOptions,
    candidates: Annotated[Optional[str], setting(PS, "candidates", "--candidates",
                                                 "Integrators to compare (shows which is the baseline).",
                                                 when_none="euler:steps=1,rk4:steps=1 and the model's own solver")] = None,
    json_path: opt.JsonOut = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Show how dise reads a model: the solve it watched the model make (or the block it found by
    its attributes), every solver call of the forward, the model's own solver and dise's baseline
    for it, how f takes its time and state, the fidelity check, whether export needs --arch,
    parameters of encoder, f and decoder, and the cost of one f call. Reading the solve needs a few
    inputs (--data). A fidelity check that fails is exit 2, after the report.
    """
    from dise_cli.exporting import export_plan
    from dise_cli.inspection import describe_file, describe_model
    from dise_cli.loading import load_model
    from dise_cli.pipeline import check_model, open_inputs, raise_if_unfaithful
    from dise_cli.render import render_inspect
    from dise_cli.sources import model_inputs, project_config

    check_report_targets(json_path, None)
    config = project_config(source)
    inputs = model_inputs(source, config)
    ui = Output(quiet=quiet, json_path=json_path)
    if inputs.data is None:
        render_inspect(ui, describe_file(load_model(inputs.model)))
        return
    opened = open_inputs(inputs, candidates=candidates if candidates is not None else config.get("candidates"),
                         check=False)
    opened.fidelity = check_model(opened)
    render_inspect(ui, describe_model(opened, opened.fidelity, export_plan(opened.model, opened.loaded, opened.probe)))
    raise_if_unfaithful(opened)


@command(
    "dise merge part1.profile.safetensors part2.profile.safetensors --out profile.safetensors",
)
def merge(
    shards: Annotated[list[str], typer.Argument(help="The shard profiles (dise profile --shard K/N), in any order.")],
    out: Annotated[Optional[str], typer.Option("--out", help=f"Profile file to write [default: {PROFILE_OUT}].")] = None,
    json_path: opt.JsonOut = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Join the shards of one profile (a job array's dise profile --shard K/N runs) into the profile a
    single run writes. Checks that they belong together (same model, data, candidates, seed and
    settings) and hold every sample exactly once; otherwise exit 2 naming the file.
    """
    from dise_cli import api
    from dise_cli.render import render_profile

    out_path = writable_target(out or PROFILE_OUT, "--out")
    check_report_targets(json_path, None)
    ui = Output(quiet=quiet, json_path=json_path)
    run = api.merge(shards, out=out_path)
    ui.note(f"merged {len(shards)} shards: {run.profile.n_samples} samples")
    render_profile(ui, run)
    ui.note(f"wrote {out_path}")
