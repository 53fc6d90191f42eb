"""Figures of the reports, for ``--plot PATH``: what ``profile``, ``train-selector`` and ``evaluate``
found, as a PNG or SVG chosen by the file's extension.

matplotlib is an optional extra (``pip install -e '.[plot]'``), imported only when a figure is
drawn. It is used through its object API: a ``Figure`` saved by its own canvas (Agg for PNG), no
pyplot and no figure left in global state; dise's rc settings hold only while a figure is drawn.
Every file is written under a temporary name and renamed when whole, so a failure leaves no half
file. The same report gives the same bytes: the SVG's ids are salted with a constant and neither
format records a date or matplotlib's version.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dise_cli.errors import UsageError
from dise_cli.files import atomic_path, writable_target
from dise_cli.profiles import Profile
from dise_cli.profiling import ProfileRun
from dise_cli.reports import oracle, summarize

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_FORMATS = ("png", "svg")
INSTALL_HINT = "pip install -e '.[plot]'"
MIN_MATPLOTLIB = (3, 5)          # Figure(layout="constrained"), Axes.set_yticks(ticks, labels)
PNG_DPI = 120
ROW_HEIGHT = 0.8                 # the tallest bar of a row in the NFE distribution
MIN_BAR = 0.04                   # the shortest, as a share of the tallest
DECADES = 10.0                   # an axis goes logarithmic where its values span this factor or more
# Fixed for every figure: constant SVG ids (matplotlib otherwise salts them at random) and glyphs as paths.
RC = {"svg.hashsalt": "dise", "svg.fonttype": "path", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
      "legend.fontsize": 8}
METADATA = {"png": {"Software": "dise"}, "svg": {"Creator": "dise", "Date": None}}

# How each kind of point looks wherever it appears.
STYLES: dict[str, dict] = {
    "candidate": {"marker": "o", "s": 36, "color": "tab:blue", "zorder": 3},
    "baseline": {"marker": "s", "s": 56, "color": "tab:red", "zorder": 4},
    "best": {"marker": "o", "s": 190, "facecolors": "none", "edgecolors": "tab:green", "linewidths": 1.6, "zorder": 5},
    "oracle": {"marker": "*", "s": 150, "color": "gold", "edgecolors": "black", "linewidths": 0.6, "zorder": 5},
    "dise": {"marker": "D", "s": 64, "color": "tab:purple", "edgecolors": "black", "linewidths": 0.6, "zorder": 6},
    "uncalibrated": {"marker": "D", "s": 48, "facecolors": "none", "edgecolors": "tab:purple", "linewidths": 1.2,
                     "zorder": 5},
}


@dataclass(frozen=True)
class _Mark:
    """One point of an accuracy (or error) against mean NFE chart."""

    kind: str            # a key of STYLES
    label: str           # legend text
    nfe: float
    value: float | None  # None: not known (no β for a regression), not drawn
    name: str = ""       # written beside the point (candidates only)


# ---------------------------------------------------------------------------------------------- checks

def plot_format(path: str | os.PathLike, flag: str = "--plot") -> str:
    """``"png"`` or ``"svg"`` from ``path``'s extension; ``UsageError`` naming ``flag`` otherwise."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        found = f"extension '.{suffix}'" if suffix else "no extension"
        raise UsageError(f"{flag}: '{path}' has {found}; valid: {', '.join('.' + f for f in PLOT_FORMATS)}")
    return suffix


def require_matplotlib(flag: str = "--plot") -> None:
    """Raise ``UsageError`` (one line, what to install) where matplotlib is missing or too old."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError(f"{flag}: needs matplotlib, which is not installed; install it with {INSTALL_HINT}") from None
    if _version(matplotlib.__version__) < MIN_MATPLOTLIB:
        want = ".".join(map(str, MIN_MATPLOTLIB))
        raise UsageError(f"{flag}: needs matplotlib >= {want}, found {matplotlib.__version__}; "
                         f"upgrade it with {INSTALL_HINT}")


def check_plot_path(path: str | os.PathLike, flag: str = "--plot") -> Path:
    """Check ``path`` before any work: a .png or .svg name in a writable folder, and matplotlib there.

    Returns the path; raises ``UsageError`` naming ``flag``.
    """
    plot_format(path, flag)
    target = writable_target(path, flag)
    require_matplotlib(flag)
    return target


# ---------------------------------------------------------------------------------------------- figures

def plot_profile(run: ProfileRun | Profile, path: str | os.PathLike, *, report: dict | None = None,
                 flag: str = "--plot") -> Path:
    """The figure of ``dise profile``: how each candidate's NFE spread over the samples (the share of
    samples at each NFE, the range and the mean), and its accuracy (classification) or mean Γ
    (regression) against its mean NFE, with the baseline, the best single candidate and the oracle marked.

    ``run``: the profile (per-sample arrays ``[N, K]``) with or without its timing; ``report``: its
    ``summarize`` report where already made. Returns the path written.
    """
    fmt = _checked(path, flag)
    profile = run.profile if isinstance(run, ProfileRun) else run
    if report is None:
        report = summarize(profile, run.timing if isinstance(run, ProfileRun) else None)
    with _style():
        fig = _figure(2)
        left, right = fig.subplots(1, 2)
        _nfe_distribution(left, profile, _short_names(profile.candidates))
        _profile_tradeoff(right, profile, report)
        fig.suptitle(f"dise profile: {report['n_samples']} samples, baseline {report['baseline']}")
        _save(fig, path, fmt)
    return Path(path)


def plot_training(report: dict, path: str | os.PathLike, *, flag: str = "--plot") -> Path:
    """The figure of ``dise train-selector``: the validation trade-off (accuracy against mean NFE, the
    points calibration chose from) with the chosen point, the uncalibrated selector, the accuracy floor,
    the baseline, the best single candidate and the oracle marked. Returns the path written."""
    fmt = _checked(path, flag)
    with _style():
        fig = _figure(1)
        ax = fig.subplots()
        curve = report["tradeoff"]
        ax.plot([p["nfe_mean"] for p in curve], [p["accuracy"] for p in curve], "-", color="tab:purple", lw=1,
                marker=".", ms=5, alpha=0.7, label="trade-off (calibration's choices)", zorder=2)
        base = report["baseline_only"]
        floor = base["accuracy"] - report["max_accuracy_drop_pp"] / 100
        ax.axhline(floor, color="tab:red", ls=":", lw=1,
                   label=f"accuracy floor ({report['max_accuracy_drop_pp']:g} pp below the baseline)")
        names = _short_names(list(report["dise"]["share"]))
        marks = [_Mark("uncalibrated", "DISE before calibration", report["uncalibrated"]["nfe_mean"],
                      report["uncalibrated"]["accuracy"]),
                 _Mark("dise", f"DISE, chosen (selector {report['selector_nfe']:.2f} NFE incl.)",
                      report["dise"]["nfe_mean"], report["dise"]["accuracy"]),
                 *_reference_marks(report, names)]
        _draw_marks(ax, marks)
        _tradeoff_axes(ax, [p["nfe_mean"] for p in curve] + [m.nfe for m in marks], _right_label(report["task"]))
        ax.set_title(f"dise train-selector: validation split, {report['n_validation']} samples")
        ax.legend(loc="lower right")
        _save(fig, path, fmt)
    return Path(path)


def plot_evaluation(report: dict, path: str | os.PathLike, *, flag: str = "--plot") -> Path:
    """The figure of ``dise evaluate``: accuracy against mean NFE on the test data (each candidate alone,
    DISE, the baseline, the best single candidate, the oracle), and the time per batch of DISE and of
    each candidate alone by batch size. Returns the path written."""
    fmt = _checked(path, flag)
    names = _short_names([c["candidate"] for c in report["candidates"]])
    with _style():
        fig = _figure(2)
        left, right = fig.subplots(1, 2)
        dise = report["dise"]
        marks = [*(_Mark("candidate", "candidate alone", c["nfe_mean"], c["accuracy"], names[c["candidate"]])
                   for c in report["candidates"]),
                 _Mark("dise", f"DISE (selector {dise['selector_nfe']:.2f} NFE incl.)", dise["nfe_mean"],
                      dise["accuracy"]),
                 *_reference_marks(report, names)]
        _draw_marks(left, marks)
        _tradeoff_axes(left, [m.nfe for m in marks], _right_label(report["task"]))
        left.set_title("accuracy against mean NFE")
        left.legend(loc="lower right")
        _timing(right, report, names)
        fig.suptitle(f"dise evaluate: {report['n_samples']} samples")
        _save(fig, path, fmt)
    return Path(path)


# ---------------------------------------------------------------------------------------------- panels

def _nfe_distribution(ax: Axes, profile: Profile, names: dict[str, str]) -> None:
    """One row per candidate, the first at the top: a bar at each NFE the samples took, as tall as the
    share of samples that took it (NFE are whole numbers, often a few values; a rare one still shows),
    a line from the fewest to the most, and the mean; log x where the NFE spans decades."""
    n_cand = len(profile.candidates)
    for k, spec in enumerate(profile.candidates):
        row = n_cand - 1 - k
        values, counts = torch.unique(profile.nfe[:, k].to(torch.int64), return_counts=True)
        share = counts.double() / counts.sum()
        color = STYLES["baseline" if k == profile.baseline else "candidate"]["color"]
        ax.hlines(row, float(values.min()), float(values.max()), color="0.6", lw=1, zorder=2)
        height = (share / share.max()).clamp(min=MIN_BAR).numpy()       # a value few samples took stays visible
        ax.vlines(values.double().numpy(), row, row + ROW_HEIGHT * height, color=color,
                  lw=3, zorder=3, label="share of samples at that NFE" if k == 0 else None)
        ax.scatter([float(profile.nfe[:, k].double().mean())], [row], marker="D", s=30, color="black", zorder=4,
                   label="mean" if k == 0 else None)
    labels = [names[c] + (" (baseline)" if k == profile.baseline else "") for k, c in enumerate(profile.candidates)]
    ax.set_yticks([n_cand - 1 - k + ROW_HEIGHT / 2 for k in range(n_cand)], labels)
    ax.set_ylim(-0.4, n_cand - 1 + ROW_HEIGHT + 0.3)
    ax.grid(False, axis="y")
    _scale(ax, "x", profile.nfe.double().ravel().tolist())
    ax.set_xlabel("NFE per sample")
    ax.set_title("NFE per sample")
    ax.legend(loc="best")


def _profile_tradeoff(ax: Axes, profile: Profile, report: dict) -> None:
    """Accuracy (or mean Γ) against mean NFE per candidate, the oracle, baseline and best single marked."""
    names = _short_names(profile.candidates)
    classification = report["task"] == "classification"
    key = "accuracy" if classification else "mean_error"
    marks = [_Mark("candidate", "candidate", r["nfe"]["mean"], r[key], names[r["candidate"]])
             for r in report["candidates"]]
    base = report["candidates"][profile.baseline]
    marks.append(_Mark("baseline", f"baseline: {names[base['candidate']]}", base["nfe"]["mean"], base[key]))
    best = next(r for r in report["candidates"] if r["candidate"] == report["best_single"]["candidate"])
    marks.append(_Mark("best", f"best single: {names[best['candidate']]}", best["nfe"]["mean"], best[key]))
    orc = report["oracle"]
    marks.append(_Mark("oracle", "oracle (cheapest right candidate per sample)", orc["nfe_mean"],
                      orc["accuracy"] if classification else _oracle_error(profile, report.get("beta"))))
    _draw_marks(ax, marks)
    if classification:
        _tradeoff_axes(ax, [m.nfe for m in marks], "accuracy")
    else:
        _scale(ax, "x", [m.nfe for m in marks])
        _scale(ax, "y", [m.value for m in marks if m.value is not None])
        ax.set_xlabel("mean NFE")
        ax.set_ylabel("mean Γ (error; lower is better)")
    ax.set_title(("accuracy" if classification else "mean Γ") + " against mean NFE")
    ax.legend(loc="best")


def _timing(ax: Axes, report: dict, names: dict[str, str]) -> None:
    """Seconds per batch against batch size: DISE and each candidate alone (medians of the repeats)."""
    from matplotlib.ticker import NullLocator

    sizes = [t["batch_size"] for t in report["timing"]]
    runners = list(report["timing"][0]["seconds_per_batch"]) if report["timing"] else []
    base = report["baseline_only"]["candidate"]
    for name in runners:
        ms = [1e3 * t["seconds_per_batch"][name] for t in report["timing"]]
        label = "DISE" if name == "dise" else names.get(name, name) + (" alone (baseline)" if name == base else " alone")
        style = ({"color": "tab:purple", "lw": 2.2, "marker": "D", "zorder": 4} if name == "dise"
                 else {"lw": 1.2, "marker": "o", "ms": 4, "color": "tab:red" if name == base else None})
        ax.plot(sizes, ms, label=label, **style)
    if sizes and max(sizes) / min(sizes) >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.xaxis.set_minor_locator(NullLocator())
    times = [1e3 * s for t in report["timing"] for s in t["seconds_per_batch"].values()]
    _scale(ax, "y", times)
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per batch (median)")
    ax.set_title("time per batch")
    if runners:
        ax.legend(loc="best")


def _reference_marks(report: dict, names: dict[str, str]) -> list[_Mark]:
    """The baseline alone, the best single candidate and the oracle, as a report gives them."""
    base, best, orc = report["baseline_only"], report["best_single"], report["oracle"]
    return [_Mark("baseline", f"baseline: {names.get(base['candidate'], base['candidate'])} alone", base["nfe_mean"],
                 base["accuracy"]),
            _Mark("best", f"best single: {names.get(best['candidate'], best['candidate'])}", best["nfe_mean"],
                 best["accuracy"]),
            _Mark("oracle", "oracle (cheapest right candidate per sample)", orc["nfe_mean"], orc["accuracy"])]


def _draw_marks(ax: Axes, marks: list[_Mark]) -> None:
    """Scatter each mark in its kind's style, one legend entry per label, names beside candidates."""
    seen: set[str] = set()
    for m in marks:
        if m.value is None:
            continue
        ax.scatter([m.nfe], [m.value], label=None if m.label in seen else m.label, **STYLES[m.kind])
        seen.add(m.label)
        if m.name:
            ax.annotate(m.name, (m.nfe, m.value), xytext=(5, -10), textcoords="offset points", fontsize=8)


def _tradeoff_axes(ax: Axes, nfe: list[float], ylabel: str) -> None:
    """Mean NFE on x (log where it spans decades), the share right on y as a percentage."""
    from matplotlib.ticker import PercentFormatter

    _scale(ax, "x", nfe)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("mean NFE")
    ax.set_ylabel(ylabel)


# ---------------------------------------------------------------------------------------------- helpers

def _checked(path: str | os.PathLike, flag: str) -> str:
    """The format of ``path`` once it and matplotlib have passed ``check_plot_path``."""
    check_plot_path(path, flag)
    return plot_format(path, flag)


@contextmanager
def _style() -> Iterator[None]:
    """The rc settings every figure is drawn and saved under (restored afterwards)."""
    import matplotlib

    with matplotlib.rc_context(RC):
        yield


def _figure(panels: int) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(5.6 * panels, 4.4), layout="constrained")


def _save(fig: Figure, path: str | os.PathLike, fmt: str) -> None:
    """Write ``fig`` to ``path`` atomically (Agg for PNG, matplotlib's SVG writer for SVG)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=METADATA[fmt])


def _scale(ax: Axes, axis: str, values: list[float]) -> None:
    """Log scale on ``axis`` where the positive ``values`` span decades, else linear; ticks as plain
    numbers (1, 2, 5, 10, ...) rather than powers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not (finite and min(finite) > 0 and max(finite) / min(finite) >= DECADES):
        return
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _short_names(specs: list[str]) -> dict[str, str]:
    """Each candidate spec by its method name where that is unique among them, else in full."""
    methods = [s.split(":")[0] for s in specs]
    return {s: m if methods.count(m) == 1 else s for s, m in zip(specs, methods)}


def _right_label(task: str) -> str:
    return "accuracy" if task == "classification" else "share with Γ ≤ β"


def _oracle_error(profile: Profile, beta: float | None) -> float | None:
    """The oracle's mean Γ (regression): each sample's error under the candidate the oracle picks."""
    choice = oracle(profile, beta)["choice"]
    gamma = profile.gamma.gather(1, choice[:, None]).squeeze(1)
    finite = torch.isfinite(gamma)
    return float(gamma[finite].mean()) if finite.any() else None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())
