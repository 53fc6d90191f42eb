"""The Python API: each command of the ``dise`` CLI as a function, so that a notebook never goes
through argv. The CLI calls exactly these; options and defaults are the same in both (the
settings dataclasses hold the defaults, a dise.yaml fills what is not given).

    import dise_cli
    run = dise_cli.profile("sample_models/mnist_odenet/dise.yaml", limit=64, out="p.safetensors")
    result = dise_cli.train_selector("sample_models/mnist_odenet/dise.yaml", "p.safetensors", out="s.safetensors")
    dise_cli.export("sample_models/mnist_odenet/dise.yaml", "s.safetensors", "mnist.dise")
    report = dise_cli.evaluate("mnist.dise", "sample_models/mnist_odenet/test.safetensors")
    routed = dise_cli.load("mnist.dise")

Every function raises a ``dise_cli.errors.DiseError`` subclass for bad input (``UsageError``,
``InputError``: exit 2 on the command line) and writes files whole or not at all.
"""
from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from dise_cli import distributed
from dise_cli.sources import DataOptions, ModelOptions, data_spec, device_of, model_inputs, options_from, \
    project_config, settings_from

Note = Callable[[str], None]
Progress = Callable[[int, str], AbstractContextManager]   # (total, description) -> yields advance(n)


def profile(model: str | Path | ModelOptions, *, out: str | Path | None = None, note: Note | None = None,
            progress: Progress | None = None, **options: Any):
    """Run every candidate integrator on every sample (``dise profile``).

    Args:
        model: a model file (.pt, .pth, .safetensors), a dise.yaml project file, or ``ModelOptions``.
        out: write the profile file here (None: keep it in memory only).
        note: receives each message a person should read (how dise read the model, the sample draw).
        progress: ``progress(total, description)``, a context manager yielding ``advance(n)``.
        **options: fields of ``ModelOptions`` (data, data_factory, x_key, y_key, arch, trust_pickle,
            code_path, ode_block, solve, t_span, device, config) and of ``ProfileSettings``
            (candidates, batch_size, limit, seed, task, metric, time_major, figure, figure_data, shard).

    Returns:
        ``ProfileRun``: ``run.profile`` holds the per-sample arrays [N, K];
        ``dise_cli.reports.summarize(run.profile, run.timing)`` is the report ``dise profile`` prints.
        With ``shard="K/N"`` the K-th of N shards (``merge`` joins them). Under torchrun every rank
        profiles its shard and rank 0 gets the whole profile (``run.world_size`` says how many made
        it); the other ranks get None.
    """
    from dise_cli.errors import UsageError
    from dise_cli.files import writable_target
    from dise_cli.pipeline import ProfileSettings, open_inputs, profile_model, reading_notes
    from dise_cli.profiles import write_profile
    from dise_cli.sharding import Plan, Shard, merge_run, stamp

    source, config, settings = _model_command(model, options, ProfileSettings)
    out_path = None if out is None else writable_target(out, "--out")
    inputs = model_inputs(source, config)
    world = distributed.current(inputs.device)
    if world is not None and settings.shard is not None:
        raise UsageError("--shard: under torchrun every rank takes its own shard; --shard K/N is for job arrays "
                         "started without it")
    shard = Shard.parse(settings.shard) if settings.shard else Shard(world.rank, world.size) if world else None
    tell = note or _ignore

    def work():
        opened = open_inputs(_replace(inputs, device=world.device) if world else inputs, candidates=settings.candidates)
        for message in reading_notes(opened):
            tell(message)
        plan = Plan(len(opened.data), settings.limit, settings.seed, settings.batch_size)
        rows = plan.rows()
        if len(rows) < len(opened.data):
            tell(f"profiling {len(rows)} of {len(opened.data)} samples (--limit {settings.limit}, --seed {settings.seed})")
        if shard is not None:
            where = f"rank {world.rank} of {world.size}, on {world.device}" if world else f"shard {shard.label}"
            tell(f"{where}: {len(plan.shard_rows(shard))} of {len(rows)} samples")
        mine = len(rows) if shard is None else len(plan.shard_rows(shard))
        with (progress or _no_progress)(mine, "profiling") as advance:
            run = profile_model(opened, rows=rows, batch_size=settings.batch_size, task=settings.task,
                                metric=settings.metric, time_major=settings.time_major, seed=settings.seed,
                                progress=advance, figure=settings.figure, figure_data=settings.figure_data,
                                shard=shard.pair if shard else (0, 1), note=tell)
        if shard is not None:
            stamp(run.profile, shard, plan)
        return run

    if world is None:
        run = work()
    else:
        run = merge_run(world.collect(work))
        if run is None:
            return None
    if out_path is not None:
        write_profile(run.profile, out_path)
    return run


def merge(shards: list[str | Path], *, out: str | Path | None = None):
    """Join shard profiles (``profile(..., shard="K/N")``) into the profile one run writes (``dise merge``).

    Args:
        shards: the shard profile files, in any order.
        out: write the merged profile here (None: in memory only).

    Returns:
        ``ProfileRun`` of the whole profile (its timing added up from the shards').
    """
    from dise_cli.files import writable_target
    from dise_cli.profiles import read_profile, write_profile
    from dise_cli.profiling import ProfileRun
    from dise_cli.sharding import merge_profiles, timing_of

    out_path = None if out is None else writable_target(out, "--out")
    profile = merge_profiles([(str(path), read_profile(path)) for path in shards])
    run = ProfileRun(profile=profile, timing=timing_of(profile))
    if out_path is not None:
        write_profile(profile, out_path)
    return run


def train_selector(model: str | Path | ModelOptions, profile: str | Path, *, out: str | Path | None = None,
                   progress: Progress | None = None, **options: Any):
    """Fit and calibrate the selector on a profile of this model and data (``dise train-selector``).

    Args:
        model: as for ``profile``; the data must be the data the profile was made from.
        profile: the profile file (``profile(..., out=...)`` or ``dise profile``).
        out: write the selector file here (None: keep it in memory only).
        **options: fields of ``ModelOptions`` and of ``TrainSettings`` (alpha, M, beta,
            selector_arch, epochs, lr, train_batch_size, val_split, seed, max_accuracy_drop, inputs).

    Returns:
        ``TrainResult``: ``result.selector`` and ``result.report`` (what ``dise train-selector`` prints).
    """
    from dise_cli import selector_training
    from dise_cli.files import sha256_file, writable_target
    from dise_cli.pipeline import open_inputs
    from dise_cli.profiles import read_profile
    from dise_cli.selector import write_selector

    source, config, settings = _model_command(model, options, selector_training.TrainSettings)
    out_path = None if out is None else writable_target(out, "--out")
    prof = read_profile(profile)
    opened = open_inputs(model_inputs(source, config), candidates=",".join(prof.candidates))
    with (progress or _no_progress)(settings.epochs, "training") as advance:
        result = selector_training.train_selector(opened, prof, str(profile), settings, progress=advance)
    result.selector.meta["profile_sha256"] = sha256_file(profile)
    if out_path is not None:
        write_selector(result.selector, out_path)
    return result


def export(model: str | Path | ModelOptions, selector: str | Path, out: str | Path, *,
           profile: str | Path | None = None, **options: Any):
    """Package model and selector into one ``.dise`` bundle at ``out`` (``dise export``).

    Args:
        model: as for ``profile`` (no data needed).
        selector: the selector file; ``profile``: the profile it was trained on, to check they belong together.
        **options: fields of ``ModelOptions``; ``device`` defaults to cpu here (programs exported on
            the CPU load anywhere).

    Returns:
        ``ExportInfo``: which programs were exported, or why none were.
    """
    from dise_cli.exporting import check_selector_profile, export_bundle
    from dise_cli.files import writable_target
    from dise_cli.selector import read_selector

    source, config, _ = _model_command(model, options, None)
    if source.device is None and config.get("device") is None:
        source = _replace(source, device="cpu")
    inputs = model_inputs(source, config, with_data=False)
    out_path = writable_target(out, "--out")
    sel = read_selector(selector)
    if profile is not None:
        check_selector_profile(sel, str(selector), str(profile))
    return export_bundle(inputs, sel, str(selector), out_path)


def evaluate(bundle: str | Path, data: str | Path | DataOptions | None = None, *, progress: Progress | None = None,
             **options: Any) -> dict:
    """Measure a bundle on data against DOPRI5-only, the best single candidate and the oracle
    (``dise evaluate``); the gates' outcome is in ``report["gates"]``.

    Args:
        bundle: a ``.dise`` file; ``data``: a data file, or ``DataOptions``.
        **options: fields of ``DataOptions`` (data_factory, x_key, y_key, code_path, device,
            config) and of ``EvaluateSettings`` (batch_size, batch_sizes, repeats, limit, seed,
            time_major, max_accuracy_drop, min_nfe_reduction, max_nfe, max_error_increase,
            max_deviation, figure_data).

    Returns:
        The report ``dise evaluate`` prints and writes as JSON.
    """
    from dise_cli.evaluation import EvaluateSettings, evaluate_routed
    from dise_cli.profiling import batch_starts, select_rows

    source, config, settings = _data_command(data, options, EvaluateSettings)
    world = distributed.current(device_of(source, config))
    load = lambda: _bundle_and_data(bundle, source, config, world)  # noqa: E731
    # under torchrun a rank that cannot load fails every rank with its reason (not a hang, not silence)
    routed, dataset, device = load() if world is None else world.everywhere(load)
    rows = select_rows(len(dataset), settings.limit, settings.seed)
    mine = len(rows)
    if world is not None:              # this rank's batches (the bar is rank 0's)
        mine = sum(len(rows[s:s + settings.batch_size])
                   for s in batch_starts(len(rows), settings.batch_size, (world.rank, world.size)))
    with (progress or _no_progress)(mine, "evaluating") as advance:
        return evaluate_routed(routed, dataset, rows=rows, batch_size=settings.batch_size,
                               batch_sizes=[int(b) for b in settings.batch_sizes], device=device,
                               gates=settings.gates, time_major=settings.time_major, repeats=settings.repeats,
                               progress=advance, figure_data=settings.figure_data, world=world)


def run(bundle: str | Path, data: str | Path | DataOptions | None = None, *, out: str | Path | None = None,
        progress: Progress | None = None, **options: Any):
    """Offline inference over a whole dataset, grouped by chosen integrator (``dise run``).

    Args:
        bundle: a ``.dise`` file; ``data``: a data file, or ``DataOptions``.
        out: write the predictions file here (None: in memory only).
        **options: fields of ``DataOptions`` and of ``RunSettings`` (batch_size).

    Returns:
        ``OfflineResult``: outputs, integrator, NFE and fallback flag per sample, in input order.
    """
    from dise_cli.files import writable_target
    from dise_cli.offline import OfflineResult, RunSettings, run_offline, write_predictions

    source, config, settings = _data_command(data, options, RunSettings)
    out_path = None if out is None else writable_target(out, "--out")
    world = distributed.current(device_of(source, config))
    load = lambda: _bundle_and_data(bundle, source, config, world)  # noqa: E731
    # under torchrun a rank that cannot load fails every rank with its reason (not a hang, not silence)
    routed, dataset, device = load() if world is None else world.everywhere(load)
    if world is not None:              # each rank a contiguous block of the inputs; joined in rank order
        dataset = dataset.inputs_of(torch.arange(len(dataset)).tensor_split(world.size)[world.rank])

    def work():
        if world is not None and not len(dataset):   # more ranks than inputs: nothing to run here
            return None
        with (progress or _no_progress)(2 * len(dataset), "running") as advance:
            return run_offline(routed, dataset, batch_size=settings.batch_size, device=device, progress=advance)

    if world is None:
        result = work()
    else:
        parts = world.collect(work)
        if parts is None:
            return None
        result = OfflineResult.joined([part for part in parts if part is not None])
    if out_path is not None:
        write_predictions(result, routed, out_path)
    return result


def finetune(model: str | Path | ModelOptions, *, out: str | Path | None = None, val_data: str | Path | None = None,
             note: Note | None = None, progress: Progress | None = None, **options: Any):
    """Fine-tune with L_task + λR (paper Eq. 3) and write the kept checkpoint (``dise finetune``).

    Args:
        model: as for ``profile``; the data are the training data.
        out: the fine-tuned model (default: beside MODEL with a ``.finetuned`` infix).
        val_data: validation data (default: 10 % of the data, held out with ``seed``).
        note: receives what a person should know (a pickled module comes back as a state dict).
        **options: fields of ``ModelOptions`` and of ``FinetuneSettings`` (reg, lam, epochs, lr,
            batch_size, seed, max_accuracy_drop, rtol, atol, loss, schedule, task).

    Returns:
        ``FinetuneResult`` with ``settings`` and ``path`` (where the checkpoint went) filled in.
    """
    from dise_cli import finetuning
    from dise_cli.errors import UsageError
    from dise_cli.files import writable_target
    from dise_cli.imports import import_object
    from dise_cli.model_files import layout_note, output_for, save_model
    from dise_cli.judging import class_labels
    from dise_cli.pipeline import choose_task, open_inputs

    source, config, settings = _model_command(model, options, finetuning.FinetuneSettings)
    if settings.loss and settings.loss != finetuning.NLL:
        import_object(settings.loss, "--loss")
    inputs = model_inputs(source, config)
    out_path, format_note = output_for(inputs.model, None if out is None else str(out))
    writable_target(out_path, "--out")
    opened = open_inputs(inputs)
    if opened.data.per_sample_grid:
        raise UsageError(f"data '{opened.data.name}': fine-tuning on a time grid per sample is not supported yet")
    chosen, _ = choose_task(opened, settings.task, note)
    task = chosen.name
    if finetuning.learned_grid(opened.model, opened.probe):
        (note or _ignore)("note: the model's time grid depends on its parameters (a learned integration time); "
                          "dise fine-tunes with the grid as it is, so those parameters keep their values")
    train_data, val = (dataclasses.replace(d, y=class_labels(task, d.y))
                       for d in _train_and_validation(opened.data, val_data, source, config, settings.seed))
    with (progress or _no_progress)(settings.epochs * len(train_data),
                                    f"fine-tuning ({settings.reg}, λ={settings.lam:g})") as advance:
        result = finetuning.finetune(opened.model, train_data, val, settings, opened.device, chosen,
                                     progress=lambda s: advance(s["advance"]), solver=_adaptive_baseline(opened))
    save_model(opened, result.state, out_path)
    for text in (format_note, layout_note(opened.loaded, out_path)):
        if text:
            (note or _ignore)(f"note: {text}" if not text.startswith("note:") else text)
    result.settings, result.path, result.validation_size = settings, out_path, len(val)
    return result


# -- shared steps ---------------------------------------------------------------------------------

def _model_command(model, options: dict[str, Any], settings_cls):
    """ModelOptions (from ``model`` and the options that are its fields), the project config, and
    the command's settings from the remaining options (a TypeError names an unknown one)."""
    fixed = {} if isinstance(model, ModelOptions) else {"model": str(model)}
    source, rest = options_from(ModelOptions, options, base=model if isinstance(model, ModelOptions) else None,
                                **fixed)
    config = project_config(source)
    if settings_cls is None:
        if rest:
            raise TypeError(f"unknown option '{sorted(rest)[0]}'")
        return source, config, None
    return source, config, settings_from(settings_cls, rest, config)


def _data_command(data, options: dict[str, Any], settings_cls):
    base = data if isinstance(data, DataOptions) else None
    fixed = {} if base is not None or data is None else {"data": str(data)}
    source, rest = options_from(DataOptions, options, base=base, **fixed)
    config = project_config(source)
    return source, config, settings_from(settings_cls, rest, config)


def _bundle_and_data(bundle: str | Path, source: DataOptions, config: dict, world=None):
    from dise_cli.bundle import fit_data, load_bundle
    from dise_cli.datasets import load_data
    from dise_cli.errors import UsageError
    from dise_cli.sources import code_paths

    device = device_of(source, config) if world is None else world.device
    spec = data_spec(source, config)
    if spec is None:
        raise UsageError("--data: this command needs data; pass --data FILE or --data-factory package.module:fn")
    routed = load_bundle(bundle, device=device, code_path=code_paths(source, config))
    made = (routed.manifest.get("input") or {}).get("inputs")
    if spec.x_key is None and made:               # the bundle's model takes several inputs: its own keys
        spec = dataclasses.replace(spec, x_key=",".join(made["names"]))
    dataset = load_data(spec)
    fit_data(routed, dataset, str(bundle))
    return routed, dataset, device


def _adaptive_baseline(opened):
    """The model's own solver where it is adaptive (fine-tuning trains through its error estimates);
    else DOPRI5 at the settings' tolerances."""
    from dise_cli.integrators import EmbeddedRK
    base = opened.candidates.integrators[opened.candidates.baseline]
    return base if isinstance(base, EmbeddedRK) else None


def _train_and_validation(data, val_path, source: ModelOptions, config: dict, seed: int):
    """The training data and the validation data: ``val_path``, else 10 % held out with ``seed``."""
    from dise_cli.datasets import Dataset, DataSpec, load_data
    if val_path:
        spec = data_spec(source, config)
        return data, load_data(DataSpec(path=Path(val_path), x_key=spec.x_key, y_key=spec.y_key,
                                        code_path=spec.code_path))
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, len(data) // 10)

    def rows(picked: torch.Tensor, name: str) -> Dataset:
        return Dataset(x=data.x[picked], y=None if data.y is None else data.y[picked], t=data.t, name=name,
                       sha256=data.sha256, join=data.join)
    return (rows(perm[n_val:].sort().values, data.name),
            rows(perm[:n_val].sort().values, f"{data.name} (10 % held out)"))


def _replace(source, **changes):
    from dataclasses import replace
    return replace(source, **changes)


def _ignore(message: str) -> None:
    del message


@contextmanager
def _no_progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    del total, description
    yield lambda n: None
