"""``calibrate_posterior``: the pseudo-count chosen on held-out labelled data, on a tiny random model."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, TINY_CLIP, build_tiny, random_images, random_posterior

from bayesvlm_explain.evaluation.calibrate import CalibrationDataError, calibrate_posterior

GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


@pytest.fixture(scope="module")
def vlm():
    v = build_tiny(TINY_CLIP, seed=3)
    v.posterior = random_posterior(v, seed=4)
    return v


@pytest.fixture(scope="module")
def data(vlm):
    images = vlm.encode_images(random_images(vlm, n=40, seed=7))
    labels = vlm.map_logits(images, vlm.encode_prompts(PROMPTS)).argmax(-1)
    return images, labels


def _mc_nll(vlm, images, labels, n):
    """Independent scoring: set n and λ by hand, draw logits with the full covariance, average softmax."""
    vlm.optimize_prior_precision(pseudo_count=n)
    pred = vlm.predict_features(images, vlm.encode_prompts(PROMPTS), PROMPTS)
    draws = pred.moments.sample(1000, torch.Generator().manual_seed(0))
    probs = torch.softmax(draws, -1).mean(0)
    return float(-probs[torch.arange(len(labels)), labels].log().mean())


def test_chooses_the_grid_minimum_and_leaves_the_posterior_there(vlm, data):
    images, _ = data
    labels = torch.arange(40) % len(PROMPTS)  # labels unrelated to the images: a broad posterior is best
    res = vlm.calibrate_posterior((images, labels, PROMPTS), "nll", pseudo_counts=GRID)
    nll = [_mc_nll(vlm, images, labels, n) for n in GRID]
    assert [c["nlpd"] for c in res.curve] == pytest.approx(nll, rel=1e-9)
    assert res.pseudo_count == GRID[min(range(len(GRID)), key=nll.__getitem__)]
    assert res.pseudo_count == min(GRID) and nll[0] < nll[-1] and res.at_grid_edge
    vlm.optimize_prior_precision(pseudo_count=res.pseudo_count)  # λ is the marginal-likelihood one for that n
    lam = {"image": vlm.posterior.image.prior_precision, "text": vlm.posterior.text.prior_precision}
    calibrate_posterior(vlm, (images, labels, PROMPTS), pseudo_counts=GRID)
    assert vlm.posterior.image.pseudo_count == res.pseudo_count
    assert res.prior_precision == pytest.approx(lam)
    assert vlm.posterior.metadata["calibration"]["pseudo_count"] == res.pseudo_count


def test_labels_the_model_gets_right_choose_a_tight_posterior(vlm, data):
    images, labels = data  # the MAP prediction is always right: every bit of spread costs likelihood
    res = calibrate_posterior(vlm, {"images": images, "labels": labels.tolist(), "prompts": PROMPTS},
                              pseudo_counts=GRID)
    assert res.pseudo_count == max(GRID)
    nlpd = [c["nlpd"] for c in res.curve]
    assert nlpd == sorted(nlpd, reverse=True)
    ece = calibrate_posterior(vlm, (images, labels, PROMPTS), "ece", pseudo_counts=GRID)
    assert ece.objective == "ece" and ece.pseudo_count == GRID[min(range(5), key=lambda i: ece.curve[i]["ece"])]


def test_raw_images_are_encoded(vlm):
    x = random_images(vlm, n=6, seed=2)
    res = vlm.calibrate_posterior((x, [0, 1, 2, 3, 0, 1], PROMPTS), pseudo_counts=(1.0, 10.0), num_samples=50)
    assert len(res.curve) == 2 and all(0.0 <= c["accuracy"] <= 1.0 for c in res.curve)
    inner = vlm.calibrate_posterior((x, [0, 1, 2, 3, 0, 1], PROMPTS), pseudo_counts=(1e-6, 1.0, 1e6),
                                    objective="nll", num_samples=50)
    assert inner.at_grid_edge == (inner.pseudo_count != 1.0)


@pytest.mark.parametrize(("bad", "match"), [
    (lambda x: (x, [0, 1, 9], PROMPTS), "labels must lie in"),
    (lambda x: (x, [0.0, 1.0, 2.0], PROMPTS), "integer class indices"),
    (lambda x: (x, torch.tensor([0.0, 1.0, 2.0]), PROMPTS), "integer class indices"),
    (lambda x: (x, [0, 1], PROMPTS), "differ in length"),
    (lambda x: (x, [0, 0, 0], ["only one"]), "at least 2 classes"),
    (lambda x: (x, [], PROMPTS), "no labelled examples"),
    (lambda x: {"images": x, "labels": [0, 1, 2]}, "lacks"),
    (lambda x: (x, [0, 1, 2]), "must be"),
    (lambda x: (x, [0, 1, 2], "a cat"), "list of class prompt strings"),
])
def test_bad_labeled_data_is_refused_by_field(vlm, bad, match):
    feats = vlm.encode_images(random_images(vlm, n=3))
    before = vlm.posterior.image.pseudo_count
    with pytest.raises(CalibrationDataError, match=match):
        calibrate_posterior(vlm, bad(feats))
    assert vlm.posterior.image.pseudo_count == before  # nothing changed


def test_bad_options(vlm, data):
    images, labels = data
    with pytest.raises(ValueError, match="objective"):
        calibrate_posterior(vlm, (images, labels, PROMPTS), "brier")
    with pytest.raises(ValueError, match="pseudo_counts"):
        calibrate_posterior(vlm, (images, labels, PROMPTS), pseudo_counts=(1.0, -1.0))
