"""Per-sample verdicts: is a prediction right (classification) or how far off is it (regression, Γ)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dise_cli.errors import InputError, UsageError
from dise_cli.imports import import_object

TASKS = ("classification", "regression")
METRICS = ("mse", "mae", "l2")     # l2: the Euclidean distance per sample (a sampler's output)


PROBABILITY_THRESHOLD = 0.5    # a binary classifier's probability output decides class 1 above this

def detect_task(y: torch.Tensor | None, sample_output: torch.Tensor | None = None, has_decoder: bool = False, *,
                input_shape: tuple[int, ...] | list | None = None, returns_state: bool = False) -> str:
    """classification for integer labels; regression for float targets. Without labels, classification
    only where the outputs can only be class scores: a decoder's ``[N, C]`` that is not the ODE state
    (``returns_state``: a sampler's or a flow's output) and not shaped like the input (a map from noise
    to samples). Anything else is judged by its error against a reference solve, which is the stricter
    verdict: a classifier judged so is held to its scores, a sampler judged by argmax to nothing.
    Float labels that can only be class indices (``BCE`` losses want 0. and 1.) are classification
    too: see ``float_class_labels``."""
    if y is not None:
        if not y.is_floating_point():
            return "classification"
        return "classification" if float_class_labels(y, sample_output) else "regression"
    if returns_state or sample_output is None or not has_decoder:
        return "regression"
    if sample_output.ndim != 2 or sample_output.shape[1] < 2:
        return "regression"
    # a map from noise to samples; with several inputs (noise and labels), shaped like any of them
    shapes = input_shape if isinstance(input_shape, list) else [input_shape]
    if any(s is not None and tuple(sample_output.shape[1:]) == tuple(s) for s in shapes):
        return "regression"
    return "classification"


def float_class_labels(y: torch.Tensor, out: torch.Tensor | None) -> bool:
    """Float targets that are class labels: one whole number per sample, 0 and 1 for a model with one
    output (a logit or a probability, see ``binary_threshold``), or 0 to C-1 for class scores
    ``[N, C]`` (no float target of another shape fits)."""
    if out is None or not y.is_floating_point() or len(y) == 0:
        return False
    single = is_single_logit(out)
    if not (y.ndim == 1 or (single and y.ndim == 2 and y.shape[1] == 1)):
        return False
    if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()) or float(y.min()) < 0:
        return False
    if single:
        return float(y.max()) <= 1
    return out.ndim == 2 and out.shape[1] >= 2 and float(y.max()) < out.shape[1]


def binary_threshold(out: torch.Tensor, y: torch.Tensor | None) -> float:
    """Where a binary classifier's single output (for the first rows of labels ``y``) decides class 1:
    0 for a logit; 0.5 for a probability (a final sigmoid: every value in [0, 1], and ``p > 0.5`` fits
    the labels better than ``> 0``, which every probability passes)."""
    if y is None or not is_single_logit(out):
        return 0.0
    scores = out.detach().double().reshape(len(out))
    labels = y[:len(scores)].reshape(-1).to(scores.device, torch.float64)
    if len(labels) != len(scores) or bool(((scores < 0) | (scores > 1)).any()):
        return 0.0
    as_logit = ((scores > 0).double() == labels).double().mean()
    as_probability = ((scores > PROBABILITY_THRESHOLD).double() == labels).double().mean()
    return PROBABILITY_THRESHOLD if bool(as_probability > as_logit) else 0.0


def class_labels(task: str, y: torch.Tensor | None) -> torch.Tensor | None:
    """A classifier's labels as int64 class indices ``[N]`` (float 0. and 1., or ``[N, 1]``, as BCE
    training keeps them); anything else as it is."""
    if task != "classification" or y is None or not y.is_floating_point():
        return y
    if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
        return y                         # check_labels names them
    return (y.reshape(len(y)) if y.ndim == 2 and y.shape[1] == 1 else y).long()


def targets_batch_major(y: torch.Tensor, n: int, n_t: int, time_major: bool | None, data_name: str) -> torch.Tensor:
    """Targets with the sample axis first. Time-major ``[T, N, ...]`` (as odeint returns them, or with
    trajectory samples first, ``[S, N, ...]``, as the model's output may be) is told apart from
    batch-major ``[N, T, ...]`` by shape against the grid; ``time_major`` forces it."""
    if time_major is None:
        batch_first = y.shape[0] == n
        time_first = y.ndim >= 2 and y.shape[1] == n and (y.shape[0] == n_t or not batch_first)
        if batch_first and time_first and n != n_t:
            time_first = False
        if batch_first and time_first:
            raise UsageError(f"--time-major: targets in '{data_name}' have shape {tuple(y.shape)}, which reads "
                             f"both as [T, N, ...] and [N, T, ...]; pass --time-major or --no-time-major")
        time_major = time_first
    if time_major:
        if y.ndim < 2 or y.shape[1] != n:
            raise InputError(f"data '{data_name}': targets of shape {tuple(y.shape)} are not time-major [T, {n}, ...]")
        return y.transpose(0, 1)
    if y.shape[0] != n:
        raise InputError(f"data '{data_name}': targets of shape {tuple(y.shape)} do not have {n} samples first")
    return y


class Judge:
    """Scores a batch of model outputs against targets, one number per sample."""

    def __init__(self, task: str, metric: str = "mse", n_classes: int | None = None, threshold: float = 0.0):
        if task not in TASKS:
            raise UsageError(f"--task: unknown task '{task}'; valid tasks: {', '.join(TASKS)}")
        self.task = task
        self.metric_name = metric
        self.n_classes = n_classes
        self.threshold = threshold       # a single output's class-1 side: > 0 (a logit), > 0.5 (a probability)
        self._metric = _metric(metric) if task == "regression" else None

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """Class indices ``[N]`` (classification: argmax, or ``logit > 0`` for a single logit, ``p > 0.5``
        for a single probability) or the outputs themselves."""
        if self.task != "classification":
            return out
        if is_single_logit(out):
            return (out.reshape(len(out)) > self.threshold).long()
        return out.argmax(1)

    def correct(self, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool: the predicted class equals the label; non-finite outputs are never correct."""
        finite = torch.isfinite(out.reshape(len(out), -1)).all(1)
        return (self.predict(out) == labels.to(out.device)) & finite

    def scores(self, out: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` float32 class scores for the AUC: the logit ``[N, 1]`` of a single-logit classifier,
        else the outputs (softmax is applied when the AUC is computed)."""
        return out.reshape(len(out), -1).float()

    def gamma(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[N]`` error Γ per sample; a trajectory output is compared at its last time when the
        target is a single state. Non-finite outputs give +inf. Integer outputs (a sampler's uint8
        images) are compared as the numbers they are, in float64 (uint8 arithmetic would wrap around)."""
        if not out.is_floating_point():
            out = out.to(torch.float64)
        target = target.to(out.device, out.dtype)
        if out.shape[1:] != target.shape[1:] and out.ndim == target.ndim + 1 and out.shape[2:] == target.shape[1:]:
            out = out[:, -1]
        if out.shape != target.shape:
            raise InputError(f"targets of shape {tuple(target.shape[1:])} per sample do not match the model's "
                             f"output of shape {tuple(out.shape[1:])}")
        g = self._metric(out, target).to(torch.float64)
        return torch.where(torch.isfinite(g), g, torch.full_like(g, float("inf")))


def _metric(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "mse":
        return lambda a, b: (a - b).pow(2).reshape(len(a), -1).mean(1)
    if name == "mae":
        return lambda a, b: (a - b).abs().reshape(len(a), -1).mean(1)
    if name == "l2":
        return lambda a, b: (a - b).reshape(len(a), -1).norm(dim=1)
    if ":" in name:
        return import_object(name, "--metric")
    raise UsageError(f"--metric: unknown metric '{name}'; valid: {', '.join(METRICS)} or package.module:fn")


@dataclass(frozen=True)
class Task:
    """How outputs are judged: ``name`` classification | regression, and for a binary classifier's
    single output the value above which it says class 1 (0 for a logit, 0.5 for a probability)."""

    name: str
    threshold: float = 0.0

    def judge(self, metric: str | None = None) -> "Judge":
        return Judge(self.name, metric or "mse", threshold=self.threshold)


def is_single_logit(out: torch.Tensor) -> bool:
    """A binary classifier's one logit per sample (``[N]`` or ``[N, 1]``): right means ``(logit > 0) == label``."""
    return out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)


def check_labels(task: str, y: torch.Tensor | None, sample_output: torch.Tensor, data_name: str) -> None:
    """Classification labels must be class indices the model can output: integers in [0, C), or 0
    and 1 for a single logit."""
    if task != "classification" or y is None:
        return
    if y.is_floating_point():
        raise InputError(f"data '{data_name}': labels are {y.dtype}; a classifier needs integer class indices "
                         f"(or pass --task regression)")
    low, high = int(y.min()), int(y.max())
    if is_single_logit(sample_output):
        if low < 0 or high > 1:
            raise InputError(f"data '{data_name}': labels run from {low} to {high}, but the model outputs one "
                             f"logit (a binary classifier: labels 0 and 1)")
        return
    n_classes = sample_output.shape[1]
    if low < 0 or high >= n_classes:
        raise InputError(f"data '{data_name}': labels run from {low} to {high}, but the model outputs "
                         f"{n_classes} classes (0 to {n_classes - 1})")
