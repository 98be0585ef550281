"""Calibration metrics and temperature scaling for classification over prompts.

ECE is torchmetrics' top-label L1 calibration error with equal-width bins (20 by default, as in the
paper's zero-shot tables, method.md §5); NLPD is the mean negative log predictive probability of the
true class; Brier is the mean squared distance between the probability vector and the one-hot label.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import multiclass_calibration_error

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
