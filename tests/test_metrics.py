"""Calibration metrics against naive implementations, and temperature scaling against a grid."""

from __future__ import annotations

import pytest
import torch

from bayesvlm_explain.evaluation.metrics import calibration_metrics, fit_temperature


def _naive_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    conf, pred = probs.max(-1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            acc = (pred[mask] == labels[mask]).double().mean()
            total += mask.double().mean() * (acc - conf[mask].mean()).abs()
    return float(total)


def test_metrics_against_naive_versions():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 7, generator=g, dtype=torch.float64)
    probs = torch.softmax(logits, -1)
    labels = torch.randint(0, 7, (500,), generator=g)
    m = calibration_metrics(probs, labels)
    assert abs(m["ece"] - _naive_ece(probs, labels, 20)) < 1e-5
    assert abs(m["nlpd"] - float(torch.nn.functional.cross_entropy(logits, labels))) < 1e-9
    brier = sum(float(((probs[i] - torch.eye(7, dtype=torch.float64)[labels[i]]) ** 2).sum()) for i in range(500)) / 500
    assert abs(m["brier"] - brier) < 1e-9
    assert m["accuracy"] == float((probs.argmax(-1) == labels).double().mean()) and m["n"] == 500


def test_perfectly_calibrated_predictions_have_small_ece():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(2 * torch.randn(20_000, 5, generator=g, dtype=torch.float64), -1)
    labels = torch.multinomial(probs, 1, generator=g)[:, 0]  # labels drawn from the predictive itself
    assert calibration_metrics(probs, labels)["ece"] < 0.02
    over = torch.softmax(4 * probs.log(), -1)  # sharpened: over-confident
    assert calibration_metrics(over, labels)["ece"] > 0.1


def test_temperature_matches_grid_search():
    g = torch.Generator().manual_seed(2)
    true = torch.randn(2000, 10, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(true, -1), 1, generator=g)[:, 0]
    logits = 3.0 * true  # over-confident by a factor 3
    t = fit_temperature(logits, labels)
    grid = torch.logspace(-1, 1.5, 4001, dtype=torch.float64)
    nll = torch.stack([torch.nn.functional.cross_entropy(logits / s, labels) for s in grid])
    assert abs(t - float(grid[nll.argmin()])) / t < 2e-3
    assert 2.4 < t < 3.6


def test_metrics_reject_bad_shapes():
    probs = torch.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"probs must be \[N, C\] and labels \[N\]"):
        calibration_metrics(probs, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="no samples"):
        calibration_metrics(probs[:0], torch.zeros(0, dtype=torch.long))
