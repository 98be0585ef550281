"""Calibration, selective-prediction and detection metrics, temperature scaling, clustered bootstrap.

ECE is torchmetrics' top-label L1 calibration error with equal-width bins (20 by default, as in the
paper's zero-shot tables, method.md §5); NLPD is the mean negative log predictive probability of the
true class; Brier is the mean squared distance between the probability vector and the one-hot label.
AUROC is torchmetrics' binary AUROC (ties count one half); selective accuracy keeps the most confident
fraction of the inputs. Confidence intervals resample whole clusters (e.g. every image of one emoji),
because augmented copies and styles of one concept are not independent draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchmetrics.functional.classification import binary_auroc, multiclass_calibration_error

EPS = 1e-12


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 20) -> float:
    """Top-label L1 ECE of probabilities [N, C] for labels [N] in ``n_bins`` equal-width bins (torchmetrics)."""
    return float(multiclass_calibration_error(probs.float(), labels.long(), num_classes=probs.shape[1],
                                              n_bins=n_bins, norm="l1"))


def calibration_metrics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 20) -> dict[str, float]:
    """Accuracy, ECE, NLPD (nats) and Brier of predictive probabilities [N, C] for labels [N]."""
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be [N, C] and labels [N], got {tuple(probs.shape)}, {tuple(labels.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("no samples")
    probs = probs.double()
    labels = labels.long()
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return {
        "accuracy": float((probs.argmax(-1) == labels).double().mean()),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nlpd": float(-probs.gather(1, labels[:, None]).clamp_min(EPS).log().mean()),
        "brier": float((probs - onehot).square().sum(-1).mean()),
        "n": int(probs.shape[0]),
    }


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = (1e-2, 1e2),
                    iters: int = 200) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (golden-section on log T).

    The NLL is convex in ``1/T``, hence unimodal in ``log T``; ``bounds`` limits ``T``.
    """
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
        if hi - lo < 1e-9:
            break
    return math.exp(0.5 * (lo + hi))


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` [N] for detecting ``positives`` [N] (bool); NaN if one class."""
    positives = positives.bool()
    if scores.shape != positives.shape or scores.ndim != 1:
        raise ValueError(f"scores and positives must both be [N], got {tuple(scores.shape)}, {tuple(positives.shape)}")
    if bool(positives.all()) or not bool(positives.any()):
        return math.nan
    return float(binary_auroc(scores.double(), positives.long(), validate_args=False))


def misclassification_auroc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """How well low ``confidence`` [N] flags the wrong predictions (``correct`` [N] bool): AUROC in [0, 1]."""
    return auroc(-confidence.double(), ~correct.bool())


def selective_accuracy(confidence: torch.Tensor, correct: torch.Tensor, coverage: float) -> float:
    """Accuracy on the ``ceil(coverage * N)`` most confident inputs (ties kept in input order)."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    if confidence.shape != correct.shape or confidence.ndim != 1 or confidence.numel() == 0:
        raise ValueError("confidence and correct must both be [N] with N >= 1")
    keep = math.ceil(coverage * confidence.numel())
    order = torch.sort(-confidence.double(), stable=True).indices[:keep]
    return float(correct.bool()[order].double().mean())


def cluster_resamples(clusters: Sequence[str], num: int, seed: int = 0) -> list[torch.Tensor]:
    """``num`` bootstrap index sets [M] that draw whole clusters with replacement (rows grouped by label).

    A drawn cluster contributes all its rows; the sets differ in length when clusters differ in size.
    """
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(clusters):
        groups.setdefault(c, []).append(i)
    members = [torch.tensor(ix) for ix in groups.values()]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        pick = torch.randint(len(members), (len(members),), generator=gen)
        out.append(torch.cat([members[int(j)] for j in pick]))
    return out


def bootstrap_interval(stat: Callable[[torch.Tensor], float], resamples: Sequence[torch.Tensor],
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``stat(index)`` over the resamples (NaN replicates, e.g. one class only, dropped)."""
    values = torch.tensor([stat(ix) for ix in resamples], dtype=torch.float64)
    values = values[~values.isnan()]
    if values.numel() == 0:
        return math.nan, math.nan
    lo, hi = torch.quantile(values, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)
