"""The profile file: per-sample, per-candidate results that the next commands read.

A safetensors file (no pickle). Arrays are ``[N, K]`` (N profiled samples, K candidates in the
header's order): ``nfe`` int32, ``status`` uint8, and ``correct`` uint8 plus ``pred`` int64
(classification, with ``scores`` [N, K, C] and ``target`` [N] for the AUC) or ``gamma`` float64 plus
``deviation`` float64 (regression; Γ against the targets and against the baseline's output, with
``outputs`` [N, K, F] and ``reference`` [N, F] for a task figure, and ``figure_data`` [M, F], the
held-out samples of ``--figure-data``);
``index`` [N] holds each sample's row in the data. The text header (one metadata entry,
``dise_profile``, holding sorted JSON: safetensors keeps several entries in a random order) says
what produced it, under ``made_with`` where it was made (``dise_cli.provenance``: versions and
device), and under ``timing`` each candidate's measured seconds per NFE and per step (what
``train-selector --cost seconds`` prices samples with). Neither is compared by any check. The same
inputs and seed give the same arrays and the same header apart from ``timing`` (``identity``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dise_cli import __version__
from dise_cli.errors import InputError, first_line
from dise_cli.files import atomic_path, read_safetensors
from dise_cli.provenance import PROVENANCE_KEY, made_with, read_made_with

PROFILE_FORMAT = "dise-profile"
TIMING_KEY = "timing"       # measured seconds per NFE and per step: differs run to run, compared by no check
PROFILE_FORMAT_VERSION = 1
HEADER_KEY = "dise_profile"
ARRAYS = {"classification": ("nfe", "status", "correct", "pred"),
          "regression": ("nfe", "status", "gamma", "deviation")}
# Classification arrays a profile has when it was made by a dise that records them (read where present):
# ``scores`` [N, K, C] float32, each candidate's class scores (a single logit: C = 1), and ``target``
# [N] int64, the class each sample was judged against (its label, or the reference solve's answer).
OPTIONAL = {"classification": ("scores", "target"), "regression": ("outputs", "reference", "figure_data")}
UNPAIRED = ("figure_data",)     # optional arrays not indexed by sample


@dataclass
class Profile:
    candidates: list[str]
    baseline: int                 # index of the reference candidate (the first dopri5)
    task: str
    t_span: list[float]
    index: torch.Tensor           # [N] rows of the data
    nfe: torch.Tensor             # [N, K] int32
    status: torch.Tensor          # [N, K] uint8
    correct: torch.Tensor | None = None    # [N, K] bool (classification)
    pred: torch.Tensor | None = None       # [N, K] int64 (classification)
    gamma: torch.Tensor | None = None      # [N, K] float64 (regression)
    deviation: torch.Tensor | None = None  # [N, K] float64 (regression: Γ vs the baseline's output)
    scores: torch.Tensor | None = None     # [N, K, C] float32 (classification: class scores, for the AUC)
    target: torch.Tensor | None = None     # [N] int64 (classification: the class judged against)
    outputs: torch.Tensor | None = None    # [N, K, F] float32 (regression with a figure: each candidate's outputs)
    reference: torch.Tensor | None = None  # [N, F] float32 (ditto: what they were judged against)
    figure_data: torch.Tensor | None = None  # [M, F] float32 (--figure-data: held-out samples of the target)
    # per candidate, measured on the profiling device: {"seconds_per_nfe": [K], "seconds_per_step": [K],
    # "device": name}; the one wall-clock record in the file (see ``header``)
    timing: dict | None = None
    meta: dict[str, str] = field(default_factory=dict)   # model/data sha256 and paths, labels, metric, ...
    # versions and device it was made with (provenance.made_with); None for a file written before dise recorded them
    made_with: dict[str, str] | None = field(default_factory=made_with)

    @property
    def n_samples(self) -> int:
        return len(self.index)

    def subset(self, rows: torch.Tensor) -> "Profile":
        """The same profile restricted to ``rows`` (positions in this profile, not data rows)."""
        pick = lambda v: None if v is None else v[rows]  # noqa: E731
        return Profile(candidates=list(self.candidates), baseline=self.baseline, task=self.task,
                       t_span=list(self.t_span), index=self.index[rows], nfe=self.nfe[rows],
                       status=self.status[rows], correct=pick(self.correct), pred=pick(self.pred),
                       gamma=pick(self.gamma), deviation=pick(self.deviation), scores=pick(self.scores),
                       target=pick(self.target), outputs=pick(self.outputs), reference=pick(self.reference),
                       figure_data=self.figure_data, meta=dict(self.meta),
                       timing=None if self.timing is None else dict(self.timing),
                       made_with=None if self.made_with is None else dict(self.made_with))

    def header(self) -> dict:
        """Everything but the arrays (JSON-ready); ``made_with`` only where it is known."""
        header = {
            "format": PROFILE_FORMAT,
            "format_version": PROFILE_FORMAT_VERSION,
            "dise_version": __version__,
            "candidates": self.candidates,
            "baseline": self.baseline,
            "task": self.task,
            "t_span": self.t_span,
            "meta": self.meta,
        }
        if self.made_with is not None:
            header[PROVENANCE_KEY] = self.made_with
        if self.timing is not None:
            header[TIMING_KEY] = self.timing
        return header


def identity(path: str | Path) -> tuple[dict, dict[str, bytes]]:
    """What two runs on the same inputs and seed agree on: the header without ``timing``, and the arrays."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()[HEADER_KEY])
        arrays = {k: handle.get_tensor(k).numpy().tobytes() for k in handle.keys()}
    header.pop(TIMING_KEY, None)
    return header, arrays


def write_profile(profile: Profile, path: str | Path) -> None:
    """Write atomically: a temporary file in the same folder, renamed when complete."""
    from safetensors.torch import save_file
    arrays = {"index": profile.index.to(torch.int64)}
    names = ARRAYS[profile.task] + tuple(n for n in OPTIONAL[profile.task] if getattr(profile, n) is not None)
    for name in names:
        value = getattr(profile, name)
        arrays[name] = value.to(torch.uint8) if value.dtype == torch.bool else value
    arrays = {k: v.detach().cpu().contiguous() for k, v in arrays.items()}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata={HEADER_KEY: json.dumps(profile.header(), sort_keys=True)})


def read_profile(path: str | Path) -> Profile:
    p = Path(path)
    metadata, arrays = read_safetensors(p, "profile")
    try:
        header = json.loads(metadata.get(HEADER_KEY, "{}"))
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict):
        raise InputError(f"profile '{p}' has a damaged header ('{HEADER_KEY}' is not a JSON object)")
    if header.get("format") != PROFILE_FORMAT:
        raise InputError(f"profile '{p}' is not a dise profile (no 'format: {PROFILE_FORMAT}' in its header)")
    version = header.get("format_version", 0)
    if not isinstance(version, int):
        raise InputError(f"profile '{p}' has a damaged header (format_version {version!r})")
    if version > PROFILE_FORMAT_VERSION:
        raise InputError(f"profile '{p}' has format version {version}; this dise reads up to "
                         f"{PROFILE_FORMAT_VERSION}: upgrade dise")
    try:
        candidates = list(header["candidates"])
        task = header["task"]
        names = ARRAYS[task]
        missing = [n for n in ("index", *names) if n not in arrays]
        if missing:
            raise KeyError(", ".join(missing))
        n, k = len(arrays["index"]), len(candidates)
        for name in names:
            if tuple(arrays[name].shape) != (n, k):
                raise ValueError(f"'{name}' has shape {tuple(arrays[name].shape)}, expected {(n, k)}")
        profile = Profile(candidates=[str(c) for c in candidates], baseline=int(header["baseline"]), task=task,
                          t_span=[float(v) for v in header["t_span"]], index=arrays["index"],
                          nfe=arrays["nfe"], status=arrays["status"], meta=dict(header.get("meta", {})),
                          made_with=read_made_with(header.get(PROVENANCE_KEY)))
        for name in names[2:]:
            value = arrays[name]
            setattr(profile, name, value.bool() if name == "correct" else value)
        for name in OPTIONAL[task]:
            if name in arrays:
                three = name in ("scores", "outputs")
                if name in UNPAIRED:
                    if arrays[name].ndim != 2 or len(arrays[name]) < 2:
                        raise ValueError(f"'{name}' has shape {tuple(arrays[name].shape)}, expected [M >= 2, F]")
                elif arrays[name].shape[0] != n or (three and (arrays[name].ndim != 3 or arrays[name].shape[1] != k)):
                    raise ValueError(f"'{name}' has shape {tuple(arrays[name].shape)} for {n} samples and {k} candidates")
                setattr(profile, name, arrays[name])
        if profile.figure_data is not None and (profile.outputs is None
                                                or profile.figure_data.shape[1] != profile.outputs.shape[2]):
            raise ValueError(f"'figure_data' has shape {tuple(profile.figure_data.shape)}, not the outputs' size")
        timing = header.get(TIMING_KEY)
        if isinstance(timing, dict) and all(len(timing.get(key) or []) == k for key in ("seconds_per_nfe", "seconds_per_step")):
            profile.timing = timing
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"profile '{p}' is damaged or incomplete ({first_line(exc)})") from None
    return profile
