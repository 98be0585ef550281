"""The bundled model under domain shift: real renders of the emoji styles (fetched from npm, cached).

These tests build the emoji data cache on first use (``npm ci`` of the pinned artwork packages, then
resvg rendering of the 93 benchmark classes: ~40 s once, ~4 s afterwards).
"""

from __future__ import annotations

import pytest
import torch

import bayesvlm_explain as bx
from bayesvlm_explain.data.labels import load_label_space
from bayesvlm_explain.evaluation.shift import METHODS, render_splits, run_shift_benchmark
from bayesvlm_explain.explain import decompose_uncertainty

FAR_SHIFT = ("openmoji-black", "fluent-hc")  # line art and monochrome: the model is near chance there


@pytest.fixture(scope="module")
def vlm() -> bx.BayesVLM:
    return bx.BayesVLM.from_pretrained("bundled", device="cpu")


@pytest.fixture(scope="module")
def splits():
    return render_splits(64, repeats=2, seed=0)


def test_bundled_posterior_matches_model(vlm):
    assert vlm.posterior is not None and vlm.posterior.metadata["likelihood"] == "infonce"
    assert (vlm.posterior.image.dim_in, vlm.posterior.image.dim_out) == vlm.projection_dims("image")
    assert vlm.posterior.image.num_pairs >= 10_000


def test_epistemic_uncertainty_is_higher_under_far_shift(vlm, splits):
    """On ≥ 100 images each, the posterior's mutual information (BALD) and the predictive entropy are
    higher on the far-shift styles than on in-domain renders."""
    prompts = load_label_space().prompts()
    stats = {}
    for name in ("in_domain", *FAR_SHIFT):
        split = splits[name]
        assert split.labels.shape[0] >= 100
        pred = vlm.predict(split.images, prompts)
        dec = decompose_uncertainty(pred, num_samples=400, seed=0, leave_one_out=False, rank_by="variance")
        stats[name] = (float(dec.epistemic.mean()), float(dec.total_entropy.mean()))
    for name in FAR_SHIFT:
        assert stats[name][0] > 1.2 * stats["in_domain"][0], stats
        assert stats[name][1] > stats["in_domain"][1], stats


@pytest.fixture
def benchmark_vlm() -> bx.BayesVLM:
    """A model of its own: the benchmark re-optimises the posterior's n and λ while it runs."""
    return bx.BayesVLM.from_pretrained("bundled", device="cpu")


def test_shift_benchmark_payload(benchmark_vlm, splits):
    vlm = benchmark_vlm
    small = {k: splits[k] for k in ("calibration", "in_domain", "fluent-hc")}
    payload = run_shift_benchmark(vlm, small, num_samples=200)
    rows = payload["rows"]
    assert {(r["split"], r["method"]) for r in rows} == {(s, m) for s in ("in_domain", "fluent-hc") for m in METHODS}
    for r in rows:
        assert set(r) == {"split", "method", "accuracy", "ece", "nlpd", "brier", "n"}
        assert 0 <= r["ece"] <= 1 and r["nlpd"] > 0 and r["n"] == small[r["split"]].labels.shape[0]
    # the in-domain accuracy of the shipped model on fresh augmentations clears 60 %
    det = next(r for r in rows if r["split"] == "in_domain" and r["method"] == "deterministic")
    assert det["accuracy"] >= 0.6
    assert str(payload["settings"]["pseudo_count"]) in payload["settings"]["pseudo_count_nlpd_in_domain"]
    assert vlm.posterior.image.pseudo_count == 1.0  # the benchmark restores the model's posterior
    assert torch.isfinite(torch.tensor([r["nlpd"] for r in rows])).all()
