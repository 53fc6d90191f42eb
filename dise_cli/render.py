"""Tables for people: how each command's report looks on a terminal or in a log.

A list in a table or line shows its first few items, '...', its last and how many there are
(``short_list``); the JSON document keeps every item.
"""
from __future__ import annotations

import re

from typing import Any, Callable, Sequence

from dise_cli.finetuning import scale_change
from dise_cli.output import Output
from dise_cli.profiling import ProfileRun
from dise_cli.provenance import PROVENANCE_KEY
from dise_cli.reports import summarize

LIST_HEAD = 3        # items a shortened list shows before its '...' and its last item
_DRAWS = {"same": " (the model is random; compared with the same draws)",
          "spread": " and the model's own spread over seeds (its random draws are not dise's to repeat)"}


def _alone_text(fid: dict) -> str:
    """The fidelity check's comparison of samples solved one at a time, where it ran."""
    if fid.get("alone_allowed") is None:
        return ""
    return (f"; solved one at a time, {fid['alone_difference']:.3g} where round-off and the solve's own error "
            f"allow {fid['alone_allowed']:.3g}")


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "" if v is None else f"{v * scale:.{digits}g}"


def render_profile(ui: Output, run: ProfileRun) -> dict:
    """Print the profile table (and the JSON document when asked); return the report."""
    if not run.profile.n_samples:       # a shard of a job array larger than the number of batches
        report = {"schema_version": 1, "task": run.profile.task, "n_samples": 0,
                  "candidates": list(run.profile.candidates), "world_size": run.world_size,
                  "shard": run.profile.meta.get("shard")}
        ui.line(f"shard {report['shard']} holds no samples (more shards than batches of the run); its empty "
                f"profile is still needed by dise merge")
        ui.json(report)
        return report
    report = summarize(run.profile, run.timing)
    report["world_size"] = run.world_size       # processes that made it (torchrun ranks)
    shard = run.profile.meta.get("shard")
    if shard:
        report["shard"] = shard
    if run.profile.made_with is not None:
        report[PROVENANCE_KEY] = run.profile.made_with    # the profile file's record, as written
    classification = report["task"] == "classification"
    cuda = any(r.get("peak_memory_mb") is not None for r in report["candidates"])
    columns = ["candidate", "accuracy" if classification else "Γ ≤ β", "AUC" if classification else "mean Γ",
               "NFE mean", "p50", "p95", "max", "failed",
               "agree w/ base" if classification else "Γ vs base", "ms/sample", "µs/NFE", "µs/step",
               *(["peak MB"] if cuda else [])]
    rows = []
    for r in report["candidates"]:
        failed = sum(v for k, v in r["status"].items() if k != "ok")
        row = [shown(r["candidate"]), _pct(r["accuracy"]), _num(r.get("auc"), digits=4) if classification else _num(r["mean_error"]),
               f"{r['nfe']['mean']:.2f}", f"{r['nfe']['p50']:g}", f"{r['nfe']['p95']:g}", str(r["nfe"]["max"]), str(failed),
               _pct(r["agreement_with_baseline"]) if classification else _num(r["deviation_from_baseline"]),
               _num(r.get("seconds_per_sample"), 1e3), _num(r.get("seconds_per_nfe"), 1e6),
               _num(r.get("seconds_per_step"), 1e6), *([_num(r.get("peak_memory_mb"), 1, 4)] if cuda else [])]
        rows.append(row)
    labels = ("labels" if report["labels"] == "data" else
              f"a {report.get('reference_dtype') or 'float64'} reference solve ({report['labels'].split(':', 1)[1]})")
    ui.table(f"dise profile: {report['n_samples']} samples, t = {short_grid(report['t_span'])}, judged against {labels}",
             columns, rows)
    orc = report["oracle"]
    specs = [r["candidate"] for r in report["candidates"]]
    shares = ", ".join(f"{short_name(spec, specs)} {_pct(v)}" for spec, v in orc["share"].items())
    right = "accuracy" if classification else "Γ ≤ β"
    auc = lambda r: f", AUC {r['auc']:.4f}" if r.get("auc") is not None else ""  # noqa: E731
    ui.line(f"oracle (cheapest right candidate per sample): {right} {_pct(orc['accuracy'])}{auc(orc)}, "
            f"mean NFE {orc['nfe_mean']:.2f}; {shares}")
    best = report["best_single"]
    ui.line(f"best single candidate within {best['match_tolerance_pp']} pp of {report['baseline']}: "
            f"{shown(best['candidate'])} ({right} {_pct(best['accuracy'])}{auc(best)}, mean NFE {best['nfe_mean']:.2f})")
    if not classification:
        ui.line(f"β (mean Γ of {report['baseline']}) = {report['beta']:.4g}")
        if report.get("figure"):
            ui.line(f"{report['figure']}: " + ", ".join(
                f"{short_name(r['candidate'], specs)} {_figure(r['figure'])}" for r in report["candidates"])
                    + f"; oracle {_figure(orc.get('figure'))}")
    for r in report["candidates"]:
        if r["failed_samples"]:
            failed = sum(v for k, v in r["status"].items() if k != "ok")
            ui.line(f"{shown(r['candidate'])}: {failed} failed solves ("
                    + ", ".join(f"{k} {v}" for k, v in r["status"].items() if k != "ok" and v)
                    + f"), data rows {short_list(r['failed_samples'], 'rows', total=failed)}; they count as wrong")
    ui.json(report)
    return report


def _figure(value: dict | None) -> str:
    """A task figure for a line: NLP (bits per dimension) or the energy distance."""
    if not value:
        return ""
    if "nlp" in value:
        return f"{value['nlp']:.4f} nats ({value['bits_per_dim']:.4f} bits/dim)"
    data = f" (data {value['energy_distance_data']:.4g})" if "energy_distance_data" in value else ""
    return f"{value['energy_distance']:.4g}{data}"



def short_list(values: Sequence[Any], unit: str = "items", fmt: Callable[[Any], str] = str,
               head: int = LIST_HEAD, total: int | None = None) -> str:
    """A list for one line: every item when there are few, else the first ``head``, '...', the last
    and the count, e.g. ``0, 0.010101, 0.020202, ..., 1 (100 points)``. ``total``: how many there are
    when ``values`` holds only the first of them (the count then says so)."""
    n = len(values)
    if total is not None and total > n:
        return f"{_items(values, fmt, head)} (first {n} of {total} {unit})"
    return _items(values, fmt, head) + (f" ({n} {unit})" if n > head + 2 else "")


def _items(values: Sequence[Any], fmt: Callable[[Any], str], head: int) -> str:
    if len(values) <= head + 2:
        return ", ".join(fmt(v) for v in values)
    return ", ".join(fmt(v) for v in values[:head]) + f", ..., {fmt(values[-1])}"


def short_grid(t: Sequence[float]) -> str:
    """A time grid for one line: ``[0, 0.5, 1]``, or ``[0, 0.010101, 0.020202, ..., 1] (100 points)``."""
    if not t:
        return "a grid per sample"
    fmt = lambda v: f"{v:g}"  # noqa: E731
    return f"[{_items(t, fmt, LIST_HEAD)}]" + (f" ({len(t)} points)" if len(t) > LIST_HEAD + 2 else "")


def _short_value(value: Any) -> str:
    """An option or tolerance for one line: a float as ``%g``, a list shortened, the rest as written."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        n = len(value)
        return f"[{_items(value, _short_value, LIST_HEAD)}]" + (f" ({n} values)" if n > LIST_HEAD + 2 else "")
    return str(value)


def _solver_text(own: dict) -> str:
    if own["library"] == "loop":
        return f"a hand-written loop: {own['method']} (from its calls of f)"
    options = ", ".join(f"{k}={_short_value(v)}" for k, v in own["options"].items())
    return (f"{own['library']} {own['method']}, rtol {_short_value(own['rtol'])}, atol {_short_value(own['atol'])}"
            + (f", options {options}" if options else ""))


def render_inspect(ui: Output, info: dict) -> None:
    if info["read_by"] is None:                       # no data: what the file alone says
        rows = [("model", info["model"]), ("format", info["format"]), ("class", info["class"]),
                ("parameters", f"{info['parameters']['total']:,}"),
                ("solve", "unknown: pass --data, so that dise can watch the model solve a few samples")]
        ui.table("dise inspect", ["what", "found"], rows, numeric=False)
        ui.json(info)
        return
    params = info["parameters"]
    cost = info["f_call"]
    routed = next((s for s in info["solves"] if s["routed"]), None)
    rows = [("read by", info["read_by"])]
    if routed is not None:
        rows.append(("solve routed", f"{routed['index']}: {routed['library']} {routed['entry']} at {routed['where']}, "
                                     f"t = {short_grid(routed['t'])}, {routed['nfe']} NFE on the probe"))
        for s in info["solves"]:
            if not s["routed"]:
                rows.append(("other solve", f"{s['index']}: {s['library']} {s['entry']} at {s['where']}, "
                                            f"t = {short_grid(s['t'])}, {s['nfe']} NFE; runs as written "
                                            f"(--solve {s['index']} routes it)"))
    split = {"sequential": "encoder and decoder are layers of nn.Sequential containers",
             "root": "the model is the solve (no encoder or decoder)",
             "whole": "the forward runs whole with the solve answered by dise (its decoder does not run alone)",
             "nested": "the forward runs whole with the block's forward replaced by dise's solve",
             "bare": "the model is f: the data are initial states"}[info["kind"]]
    if info.get("inputs"):
        rows.append(("inputs", f"{info['inputs']} (the forward's arguments, in this order)"))
    rows += [
        ("split", f"{info['kind']}: {split}"),
        ("ODE block", info["ode_block"]),
        ("ODE function", f"{info['ode_function']} ({info['ode_function_class']})"),
        ("state", info["state"]),
        *([("f also reads", f"{info['per_sample_tensors']} (per sample: each row's go with it)")]
          if info.get("per_sample_tensors") else []),
        ("t", f"{short_grid(info['t_span'])} ({info['t_span_source']})"),
        ("f is called as", f"f({info['arg_order']}); a time per row: {info['time_mode']}"
                           f"{'' if info.get('scalar_time', True) else ' (always: it fails on a 0-dim time)'}"),
        ("model's own solver", "not seen" if info["own_solver"] is None else _solver_text(info["own_solver"])),
        ("baseline", info["baseline"] + (" (the model's own, exactly)" if info["baseline_exact"] else "")),
        ("candidates", short_list(info["candidates"], "candidates", head=8)),
    ]
    rows += [("note", note) for note in info["notes"]]
    fid = info["fidelity"]
    if fid is None:
        rows.append(("fidelity", "not applicable: the model is f itself"))
    else:
        verdict = "passed" if fid["passed"] else "FAILED"
        rows.append(("fidelity", f"{verdict}: the model's own outputs and dise's differ by {fid['difference']:.3g} "
                                 f"on {fid['samples']} samples; its tolerance explains {fid['allowed']:.3g}"
                                 + _DRAWS.get(fid.get("draws", "none"), "") + _alone_text(fid)))
    export = info["export"]
    rows.append(("export", export["note"] or "torch.export programs where they export, else the --arch factory"))
    rows += [
        ("parameters: encoder", _count(params["encoder"])),
        ("parameters: ODE function", _count(params["ode_function"])),
        ("parameters: decoder", _count(params["decoder"])),
    ]
    if params["encoder_and_decoder"] is not None:
        rows.append(("parameters: encoder + decoder", _count(params["encoder_and_decoder"])))
    if cost is not None:
        rows.append(("f call: FLOPs per sample", "not counted" if cost["flops_per_sample"] is None
                     else f"{cost['flops_per_sample']:,}"))
        rows.append((f"f call: time (batch {cost['batch']})", f"{cost['seconds_per_call'] * 1e3:.3f} ms "
                                                              f"({cost['seconds_per_sample'] * 1e6:.2f} µs per sample)"))
    ui.table("dise inspect", ["what", "found"], rows, numeric=False)
    ui.json(info)


def _count(v: int | None) -> str:
    return "n/a (not separable)" if v is None else f"{v:,}"


def error_note(report: dict) -> str | None:
    """A training report's routed mean Γ far above the baseline's where no error budget was given: the
    Γ ≤ β share calibration keeps does not see how wrong a wrong sample is."""
    if report["task"] == "classification" or any(v is not None for v in (report.get("budgets") or {}).values()):
        return None
    dise, base = report["dise"], report["baseline_only"]
    routed, baseline = dise.get("mean_error"), base.get("mean_error")
    if routed is None or not baseline or routed <= ERROR_NOTE_FACTOR * baseline:
        return None
    return (f"note: DISE's mean Γ on the validation split is {routed / baseline:.3g} times {shown(base['candidate'])}'s "
            f"({routed:.4g} against {baseline:.4g}) within {report['max_accuracy_drop_pp']} pp of its Γ ≤ β share: a "
            f"sample no candidate gets within β counts as wrong whichever solves it, so calibration may send it to "
            f"a cheap, far-off one; bound the error with --max-error-increase PCT")


def render_training(ui: Output, report: dict) -> None:
    """The validation-split comparison and the chosen point of the trade-off."""
    right = "accuracy" if report["task"] == "classification" else "Γ ≤ β"
    auc = report["task"] == "classification"
    dise, base, best, orc = report["dise"], report["baseline_only"], report["best_single"], report["oracle"]
    named = [(f"DISE (selector {report['selector_nfe']:.2f} NFE incl.)", dise, _shares(dise["share"])),
             ("DISE before calibration", report["uncalibrated"], _shares(report["uncalibrated"]["share"])),
             (f"{shown(base['candidate'])} only", base, ""), (f"best single: {shown(best['candidate'])}", best, ""),
             ("oracle", orc, _shares(orc["share"]))]
    errors = not auc
    figure = errors and any(r.get("figure") for _, r, _ in named)
    rows = [(name, _pct(r["accuracy"]), *([_num(r.get("auc"), digits=4)] if auc else []),
             *([_num(r.get("mean_error"), digits=4), _num(r.get("mean_deviation"), digits=4)] if errors else []),
             *([_figure(r.get("figure"))] if figure else []), f"{r['nfe_mean']:.2f}",
             _num(r.get("seconds_mean"), 1e3), shares) for name, r, shares in named]
    ui.table(f"dise train-selector: validation split ({report['n_validation']} samples; trained on {report['n_train']})",
             ["model", right, *(["AUC"] if auc else []), *(["mean Γ", "mean dev."] if errors else []),
              *(["figure"] if figure else []), "mean NFE", "est. ms/sample", "integrators"], rows)
    costs = report["costs"]
    note = f"; M raised to {costs['M']:g} (a cost came near the given M)" if costs["M_raised"] else ""
    unit = "NFE" if costs.get("cost", "nfe") == "nfe" else "solve time, in the baseline's seconds per NFE"
    ui.line(f"costs: Δ = {unit}, α = {costs['alpha']:g}, M = {costs['M']:g}{note}"
            + (f", β = {costs['beta']:.4g}" if costs["beta"] is not None else ""))
    sel = report["selector"]
    budgets = {k: v for k, v in (report.get("budgets") or {}).items() if v is not None}
    within = (" and ".join(f"mean Γ at most {v:g} % over" if k == "max_error_increase_pct" else
                           f"a mean deviation of at most {v:g} from" for k, v in budgets.items())
              if budgets else f"{report['max_accuracy_drop_pp']} pp of")
    ui.line(f"selector: {sel['kind']} on {sel['inputs']} {tuple(sel['in_shape'])}, {sel['parameters']:,} parameters; "
            f"calibrated within {within} {shown(base['candidate'])}")
    baseline_share = dise["share"].get(base["candidate"], 0.0)
    if baseline_share >= 0.99 and not budgets:
        ui.note(f"note: on the validation split hardly any routing cheaper than {shown(base['candidate'])} alone stayed within "
                f"{report['max_accuracy_drop_pp']} pp of it, so the selector sends nearly everything there; a larger "
                f"--val-split, another --seed or a larger --max-accuracy-drop may find one")
    note = error_note(report)
    if note:
        ui.note(note)
    curve = report["tradeoff"]
    ui.line("trade-off (" + right + " @ mean NFE): "
            + ", ".join(f"{_pct(p['accuracy'])} @ {p['nfe_mean']:.2f}" for p in curve[-8:]))
    ui.json(report)


def short_name(spec: str, specs) -> str:
    """A candidate's method alone where no other candidate of ``specs`` shares it (``rk4``), else its
    spec as ``shown`` (``rk4:steps=2`` beside ``rk4:steps=8``)."""
    method = spec.split(":")[0]
    return method if [s.split(":")[0] for s in specs].count(method) == 1 else shown(spec)


SHOWN_POINTS = 4     # a grid option of more points (or characters) than this is shown by its ends and its length
SHOWN_CHARACTERS = 40


def shown(spec: str) -> str:
    """A spec as tables and lines show it: a long ``grid=`` (a loop's own schedule, 18 σ's of EDM's) by its
    first two points, its last and its length; the JSON keeps every spec whole."""
    def short(match: re.Match) -> str:
        points = match.group(1).split("/")
        if len(points) <= SHOWN_POINTS and len(match.group(0)) <= SHOWN_CHARACTERS:
            return match.group(0)
        first, second, last = (f"{float(v.rstrip('f')):.4g}" for v in (points[0], points[1], points[-1]))
        return f"grid={first}/{second}/.../{last} ({len(points)} points)"
    return re.sub(r"grid=([^,]+)", short, spec)


def _shares(share: dict) -> str:
    return ", ".join(f"{short_name(spec, share)} {100 * v:.1f}%" for spec, v in share.items() if v > 0)


def render_evaluation(ui: Output, report: dict) -> None:
    right = "accuracy" if report["task"] == "classification" else "Γ ≤ β"
    auc = report["task"] == "classification"
    dise, base, best, orc = report["dise"], report["baseline_only"], report["best_single"], report["oracle"]
    named = [(f"DISE (selector {dise['selector_nfe']:.2f} NFE incl.)", dise, _shares(dise["share"]))]
    named += [(f"{shown(c['candidate'])} only", c, "") for c in report["candidates"]]
    named.append(("oracle", orc, _shares(orc["share"])))
    figure = not auc and any(r.get("figure") for _, r, _ in named)
    rows = [(name, _pct(r["accuracy"]), *([_num(r.get("auc"), digits=4)] if auc else []),
             *([_figure(r.get("figure"))] if figure else []), f"{r['nfe_mean']:.2f}", shares)
            for name, r, shares in named]
    ui.table(f"dise evaluate: {report['n_samples']} samples",
             ["model", right, *(["AUC"] if auc else []), *(["figure"] if figure else []), "mean NFE", "integrators"],
             rows)
    if not auc and dise.get("mean_deviation") is not None:
        ui.line(f"DISE: mean Γ {_num(dise.get('mean_error'), digits=4)} (baseline {_num(base.get('mean_error'), digits=4)}), "
                f"mean deviation from the baseline's outputs {_num(dise['mean_deviation'], digits=4)}")
    ui.line(f"best single candidate: {shown(best['candidate'])}; DISE vs {shown(base['candidate'])}: "
            f"{100 * (dise['accuracy'] - base['accuracy']):+.2f} pp, NFE x{dise['nfe_mean'] / max(base['nfe_mean'], 1e-12):.3f}"
            + (f"; {dise['fallbacks']} fallbacks to the baseline" if dise["fallbacks"] else ""))
    if report.get("single_instead"):
        name = report["single_instead"]
        single = next(c for c in report["candidates"] if c["candidate"] == name)
        ui.line(f"note: {name} alone is right as often as DISE ({right} {_pct(single['accuracy'])}) at "
                f"{single['nfe_mean']:.2f} NFE against DISE's {dise['nfe_mean']:.2f} (its selector included): on this "
                f"data, run {name} alone")
    if report.get("world_size", 1) > 1:
        ui.line(f"{report['world_size']} processes judged the samples; the times below are rank 0's, on its own device")
    for t in report["timing"]:
        spb = t["seconds_per_batch"]
        specs = [name for name in spb if name != "dise"]
        parts = ", ".join(f"{short_name(name, specs) if name != 'dise' else 'DISE'} {1e3 * s:.2f} ms"
                          for name, s in spb.items())
        ui.line(f"batch {t['batch_size']}: {parts}; DISE {t['speedup_vs_baseline']:.2f}x faster than "
                f"{short_name(base['candidate'], specs)}")
    for g in report["gates"]:
        ui.line(f"gate {g['gate']}: {g['value']} vs {g['threshold']}: {'passed' if g['passed'] else 'NOT MET'}")
    ui.json(report)


def render_demo(ui: Output, report: dict) -> None:
    """The paper's table: Model | Accuracy | NFE | time per batch, on the test split."""
    timing = report["timing"][0]
    spb = timing["seconds_per_batch"]
    by_method = {c["candidate"].split(":")[0]: c for c in report["candidates"]}
    rows = []
    for label, method in (("DOPRI5-only", "dopri5"), ("Euler-only", "euler"), ("RK4-only", "rk4")):
        c = by_method[method]
        rows.append((label, _pct(c["accuracy"]), f"{c['nfe_mean']:.2f}", f"{1e3 * spb[c['candidate']]:.1f} ms"))
    dise = report["dise"]
    rows.append(("DISE", _pct(dise["accuracy"]), f"{dise['nfe_mean']:.2f}", f"{1e3 * spb['dise']:.1f} ms"))
    orc = report["oracle"]
    rows.append(("oracle", _pct(orc["accuracy"]), f"{orc['nfe_mean']:.2f}", ""))
    ui.table(f"dise demo: MNIST ODE-Net, {report['n_samples']} test images, time per batch of {timing['batch_size']}",
             ["Model", "Accuracy", "NFE", "time per batch"], rows)
    ui.line(f"DISE routes {_shares(dise['share'])}; its NFE includes the selector ({dise['selector_nfe']:.2f} NFE); "
            f"{timing['speedup_vs_baseline']:.2f}x faster than DOPRI5-only at batch {timing['batch_size']}; "
            f"{report['seconds']:.0f} s in all")
    if report["files"]:
        ui.line(f"bundle: {report['files']['bundle']}")
    else:
        ui.line("the profile, selector and bundle were written to a temporary folder; --out DIR keeps them")
    ui.json(report)


ERROR_NOTE_FACTOR = 2.0   # render_training notes a routed mean Γ beyond this many times the baseline's, without a budget
SCALE_NOTE_FACTOR = 3.0   # render_finetune notes a change of h(0)'s scale beyond this factor


def render_finetune(ui: Output, result, settings) -> dict:
    rows = []
    for h in result.history:
        val = h["validation"]
        rows.append((str(h["epoch"]), "" if h["epoch"] == 0 else f"{h['loss']:.4f}",
                     "" if h["epoch"] == 0 else f"{h['task_loss']:.4f}", "" if h["epoch"] == 0 else f"{h['reg']:.4g}",
                     "" if h["epoch"] == 0 else f"{h['train_nfe']:.1f}",
                     _pct(val["accuracy"]) if "accuracy" in val else f"{val['nlp']:.4f}", f"{val['nfe_mean']:.2f}",
                     f"{val['state_rms']:.3g}", "kept" if h["epoch"] == result.kept_epoch else ""))
    ui.table(f"dise finetune: {settings.reg}, λ = {settings.lam:g}, {settings.epochs} epochs",
             ["epoch", "loss", "task loss", "R", "train NFE",
              ("val NLP" if "accuracy" not in result.history[0]["validation"] else
               "val Γ ≤ β" if result.task == "regression" else "val accuracy"), "val NFE", "h(0) RMS", ""],
             rows)
    start, kept = result.history[0]["validation"], result.history[result.kept_epoch]["validation"]
    density = "nlp" in start
    share = "Γ ≤ β" if result.task == "regression" else "accuracy"
    figure = (f"NLP {start['nlp']:.4f} -> {kept['nlp']:.4f} nats" if density
              else f"{share} {_pct(start['accuracy'])} -> {_pct(kept['accuracy'])}")
    budget = f"{settings.max_nlp_increase} nats" if density else f"{settings.max_accuracy_drop} pp"
    ui.line(f"kept epoch {result.kept_epoch}: validation NFE {start['nfe_mean']:.2f} -> {kept['nfe_mean']:.2f} "
            f"(x{kept['nfe_mean'] / start['nfe_mean']:.3f}), {figure}"
            + ("" if result.kept_epoch else f"; no epoch stayed within {budget} and lowered "
                                             f"the NFE, so the starting model was kept"))
    growth = scale_change(result)
    if result.kept_epoch and growth is not None and not 1 / SCALE_NOTE_FACTOR <= growth <= SCALE_NOTE_FACTOR:
        ui.note(f"h(0)'s RMS changed x{growth:.3g} ({start['state_rms']:.3g} -> {kept['state_rms']:.3g}); DOPRI5 "
                f"tolerates atol + rtol·|h| per element, so part of the NFE change comes from how strict that "
                f"tolerance now is, not from smoother dynamics")
    report = {"schema_version": 1, "reg": settings.reg, "lam": settings.lam, "epochs": settings.epochs,
              "schedule": settings.schedule, "kept_epoch": result.kept_epoch, "state_rms_change": growth,
              "history": result.history}
    if result.made_with is not None:
        report[PROVENANCE_KEY] = result.made_with
    ui.json(report)
    return report

