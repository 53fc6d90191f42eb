"""The area under the ROC curve, beside accuracy for every classifier: a single logit (binary) or
one-vs-rest macro over classes (each class's softmax probability against "is this class")."""
from __future__ import annotations

import torch


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """AUC of ``scores`` ``[N]`` or ``[N, 1]`` (binary: a logit or probability of class 1) or ``[N, C]``
    (class scores; softmax is applied, so logits or probabilities both do) against integer ``labels``
    ``[N]``. Non-finite scores rank lowest. None when no class has both positives and negatives."""
    scores = scores.detach().to(torch.float64).cpu()
    labels = labels.detach().cpu().long()
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim == 1:
        return _binary(scores, labels == 1)
    finite = torch.isfinite(scores).all(1, keepdim=True)
    probs = torch.where(finite, torch.softmax(torch.nan_to_num(scores), 1), torch.zeros_like(scores))
    per_class = [_binary(probs[:, c], labels == c) for c in range(scores.shape[1])]
    present = [a for a in per_class if a is not None]
    return sum(present) / len(present) if present else None


def _binary(score: torch.Tensor, positive: torch.Tensor) -> float | None:
    """Mann-Whitney U / (n_pos n_neg), ties counted half (average ranks)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    score = torch.where(torch.isfinite(score), score, torch.full_like(score, -float("inf")))
    ranks = _average_ranks(score)
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = torch.argsort(values, stable=True)
    _, counts = torch.unique_consecutive(values[order], return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)            # 1-based rank of each tie group's last
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(values)
    ranks[order] = torch.repeat_interleave(mean_rank, counts)
    return ranks
