"""The ``dise`` command line: one function per subcommand (parse flags -> call the library -> render)."""
from __future__ import annotations

import functools
from typing import Annotated, Any, Callable, Optional

import torch
import typer

from dise_cli import __version__
from dise_cli import options as opt
from dise_cli.config import pick, positive_int
from dise_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, DiseError
from dise_cli.files import writable_target
from dise_cli.output import Output, error_line, user_prints_to_stderr
from dise_cli.pipeline import make_inputs, open_inputs, profile_model, read_config
from dise_cli.profiles import write_profile
from dise_cli.profiling import select_rows
from dise_cli.render import render_inspect, render_profile

app = typer.Typer(help="dise: make trained Neural ODEs faster by choosing an integrator per input.",
                  pretty_exceptions_enable=False, no_args_is_help=True, add_completion=False,
                  rich_markup_mode=None)   # help texts hold [brackets]: print them, do not parse them

DEFAULT_BATCH_SIZE = 256
DEFAULT_PROFILE_OUT = "profile.safetensors"
DEFAULT_SELECTOR_OUT = "selector.safetensors"


def command(fn: Callable) -> Callable:
    """Map every failure to one stderr line and an exit code (DESIGN.md); ``--debug`` re-raises."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug"))
        try:
            with user_prints_to_stderr():
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except DiseError as exc:
            if debug:
                raise
            error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error_line("interrupted; nothing was written")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if debug:
                raise
            error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
            raise typer.Exit(EXIT_INTERNAL) from None
    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dise {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                         help="Print the version and exit.")] = None) -> None:
    """dise profiles a Neural ODE per integrator and per input, so that each input can get the
    cheapest integrator that still answers it right."""


@app.command()
@command
def profile(
    model: opt.ModelArg,
    data: opt.Data = None,
    candidates: Annotated[Optional[str], typer.Option("--candidates", help="Integrators to profile [default: euler:steps=1,rk4:steps=1 and the model's own solver, the baseline].")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help=f"Profile file to write [default: {DEFAULT_PROFILE_OUT}].")] = None,
    json_path: opt.JsonOut = None,
    batch_size: opt.BatchSize = None,
    device: opt.Device = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Profile N samples drawn with --seed [default: all].")] = None,
    seed: opt.Seed = None,
    task: Annotated[Optional[str], typer.Option("--task", help="classification or regression [default: from the labels].")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="Regression error Γ: mse, mae or package.module:fn [default: mse].")] = None,
    time_major: Annotated[Optional[bool], typer.Option("--time-major/--no-time-major", help="Targets are [T, N, ...] (as odeint returns) [default: from the shapes].", show_default=False)] = None,
    arch: opt.Arch = None,
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
    """Run every candidate integrator on every sample: accuracy or error, NFE, failures, time.

    Writes the per-sample profile that train-selector reads, and prints a table with the oracle
    (the cheapest right integrator per sample) and the best single integrator.

    \b
    Examples:
      dise profile sample_models/mnist_odenet/dise.yaml
      dise profile model.pt --arch mypkg.nets:build --data test.npz --json report.json
      dise profile model.pt --arch mypkg.nets:build --data test.npz \\
          --candidates "euler:steps=2,rk4:steps=1,dopri5:rtol=1e-4,atol=1e-4"
    """
    cfg, model_path = read_config(model, config)
    size = positive_int(pick(batch_size, cfg, "batch_size", DEFAULT_BATCH_SIZE), "--batch-size")
    n_limit = pick(limit, cfg, "limit")
    n_limit = None if n_limit is None else positive_int(n_limit, "--limit")
    rng_seed = int(pick(seed, cfg, "seed", 0))
    out_path = writable_target(out or DEFAULT_PROFILE_OUT, "--out")
    if json_path not in (None, "-"):
        writable_target(json_path, "--json")
    inputs = make_inputs(model, cfg, model_path, arch=arch, trust_pickle=trust_pickle, code_path=code_path,
                         ode_block=ode_block, t_span=t_span, data=data, data_factory=data_factory,
                         x_key=x_key, y_key=y_key, device=device, solve=solve)
    ui = Output(quiet=quiet, json_path=json_path)
    opened = open_inputs(inputs, candidates=pick(candidates, cfg, "candidates"))
    _reading_notes(ui, opened)
    rows = select_rows(len(opened.data), n_limit, rng_seed)
    if n_limit is not None and n_limit < len(opened.data):
        ui.note(f"profiling {len(rows)} of {len(opened.data)} samples (--limit {n_limit}, --seed {rng_seed})")
    with ui.progress(len(rows), "profiling") as advance:
        run = profile_model(opened, rows=rows, batch_size=size, task=pick(task, cfg, "task"),
                            metric=pick(metric, cfg, "metric", "mse"), time_major=pick(time_major, cfg, "time_major"),
                            seed=rng_seed, progress=advance)
    write_profile(run.profile, out_path)
    render_profile(ui, run)
    ui.note(f"wrote {out_path}")


@app.command()
@command
def inspect(
    model: opt.ModelArg,
    data: opt.Data = None,
    json_path: opt.JsonOut = None,
    device: opt.Device = None,
    candidates: Annotated[Optional[str], typer.Option("--candidates", help="Integrators to compare (shows which is the baseline) [default: euler:steps=1,rk4:steps=1 and the model's own solver].")] = None,
    arch: opt.Arch = None,
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
    """Show how dise reads a model: the solve it watched the model make (or the block it found by
    its attributes), every solver call of the forward, the model's own solver and dise's baseline
    for it, how f takes its time and state, the fidelity check, whether export needs --arch,
    parameters of encoder, f and decoder, and the cost of one f call. Reading the solve needs a few
    inputs (--data). A fidelity check that fails is exit 2, after the report.

    \b
    Examples:
      dise inspect sample_models/mnist_odenet/dise.yaml
      dise inspect model.pt --arch mypkg.nets:build --data test.npz
    """
    from dise_cli.exporting import export_plan
    from dise_cli.fidelity import check_fidelity, fidelity_error
    from dise_cli.inspection import describe_file, describe_model
    from dise_cli.loading import load_model
    from dise_cli.pipeline import override_hint, probe_rows

    cfg, model_path = read_config(model, config)
    if json_path not in (None, "-"):
        writable_target(json_path, "--json")
    inputs = make_inputs(model, cfg, model_path, arch=arch, trust_pickle=trust_pickle, code_path=code_path,
                         ode_block=ode_block, t_span=t_span, data=data, data_factory=data_factory,
                         x_key=x_key, y_key=y_key, device=device, solve=solve)
    ui = Output(quiet=quiet, json_path=json_path)
    if inputs.data is None:
        render_inspect(ui, describe_file(load_model(inputs.model)))
        return
    opened = open_inputs(inputs, candidates=pick(candidates, cfg, "candidates"), check=False)
    name = f"model '{inputs.model.path}'"
    with torch.no_grad():
        fidelity = check_fidelity(opened.model, probe_rows(opened.data.x).to(opened.device),
                                  opened.candidates.reproduction, exact=opened.candidates.reproduction_exact)
    plan = export_plan(opened.model, opened.loaded, probe_rows(opened.data.x).to(opened.device))
    render_inspect(ui, describe_model(opened, fidelity, plan))
    if fidelity is not None and not fidelity.passed:
        raise fidelity_error(fidelity, opened.model, name, override_hint(opened.model, opened.candidates))


def _reading_notes(ui: Output, opened) -> None:
    """Say up front what a person should know about how dise read the model."""
    for note in opened.candidates.notes:
        ui.note(f"note: {note}")
    if not opened.loaded.rebuildable:                   # no factory to fall back on: find out now whether programs will do
        from dise_cli.exporting import export_plan
        from dise_cli.pipeline import probe_rows
        plan = export_plan(opened.model, opened.loaded, probe_rows(opened.data.x).to(opened.device))
        if plan["needs_arch"]:
            ui.note(f"note: {plan['note']}")


# The other commands live in their own modules and register themselves on ``app``.
from dise_cli import cli_selection  # noqa: E402,F401  (train-selector, export, evaluate, run, demo)
from dise_cli import cli_finetune  # noqa: E402,F401
