"""Calibration, selective and detection metrics against naive implementations; temperature scaling against
a grid; the clustered bootstrap."""

from __future__ import annotations

import math

import pytest
import torch

from bayesvlm_explain.evaluation.metrics import (
    auroc,
    bootstrap_interval,
    calibration_metrics,
    cluster_resamples,
    fit_temperature,
    misclassification_auroc,
    selective_accuracy,
)


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


def _naive_auroc(scores: list[float], positives: list[bool]) -> float:
    """P(score of a positive > score of a negative) + half the ties, over all pairs."""
    pos = [s for s, p in zip(scores, positives, strict=True) if p]
    neg = [s for s, p in zip(scores, positives, strict=True) if not p]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_against_pairwise_definition():
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 12, (150,), generator=g).double()  # many ties
    positives = torch.rand(150, generator=g) < 0.3 + 0.04 * scores
    want = _naive_auroc(scores.tolist(), positives.tolist())
    assert auroc(scores, positives) == pytest.approx(want, abs=1e-6)  # torchmetrics sums in float32
    assert 0.6 < want < 1.0  # the positives do score higher: the check is not a trivial 0.5
    conf = torch.rand(150, generator=g, dtype=torch.float64)
    correct = torch.rand(150, generator=g) < conf
    assert misclassification_auroc(conf, correct) == pytest.approx(
        _naive_auroc((-conf).tolist(), (~correct).tolist()), abs=1e-6)
    assert math.isnan(auroc(scores, torch.ones(150, dtype=torch.bool)))
    with pytest.raises(ValueError, match="scores and positives"):
        auroc(scores, positives[:-1])


def test_selective_accuracy_against_sorting_by_hand():
    conf = torch.tensor([0.9, 0.2, 0.8, 0.5, 0.7, 0.1, 0.6, 0.3, 0.4, 0.95], dtype=torch.float64)
    correct = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 0, 1], dtype=torch.bool)
    # most confident first: 0.95 T, 0.9 T, 0.8 T, 0.7 F, 0.6 T | 0.5 T, 0.4 F, 0.3 F, 0.2 F, 0.1 F
    assert selective_accuracy(conf, correct, 0.5) == pytest.approx(4 / 5)
    assert selective_accuracy(conf, correct, 0.8) == pytest.approx(5 / 8)
    assert selective_accuracy(conf, correct, 1.0) == pytest.approx(0.5)
    assert selective_accuracy(conf, correct, 0.25) == pytest.approx(1.0)  # ceil(2.5) = 3 kept
    g = torch.Generator().manual_seed(5)
    c = torch.rand(333, generator=g, dtype=torch.float64)
    k = torch.rand(333, generator=g) < c
    for cov in (0.5, 0.8):
        n = math.ceil(cov * 333)
        top = sorted(range(333), key=lambda i: -float(c[i]))[:n]
        assert selective_accuracy(c, k, cov) == pytest.approx(sum(bool(k[i]) for i in top) / n)
    with pytest.raises(ValueError, match="coverage"):
        selective_accuracy(conf, correct, 0.0)


def test_cluster_bootstrap_draws_whole_clusters():
    clusters = ["a"] * 3 + ["b"] * 2 + ["c"] * 5
    res = cluster_resamples(clusters, 200, seed=1)
    for ix in res[:50]:
        picked = [clusters[int(i)] for i in ix]
        for c in set(picked):  # a cluster appears with all its rows, as often as drawn
            assert picked.count(c) % clusters.count(c) == 0
    assert cluster_resamples(clusters, 5, seed=1)[0].tolist() == res[0].tolist()
    # the interval of a cluster-level mean covers the cluster means' spread, not the row count's
    values = torch.tensor([0.0] * 3 + [1.0] * 2 + [0.5] * 5, dtype=torch.float64)
    lo, hi = bootstrap_interval(lambda ix: float(values[ix].mean()), res)
    assert 0.0 <= lo < float(values.mean()) < hi <= 1.0
    assert bootstrap_interval(lambda ix: math.nan, res[:3]) == (pytest.approx(math.nan, nan_ok=True),) * 2
