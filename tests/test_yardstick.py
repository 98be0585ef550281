"""The yardstick: percentiles of an image's uncertainty among the model's own in-domain images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROMPTS, random_images

from bayesvlm_explain.pretrained.registry import BUNDLED, asset_spec
from bayesvlm_explain.yardstick import (
    FIGURES,
    JOINT,
    OutOfDomainRule,
    Yardstick,
    YardstickError,
    build_yardstick,
    choose_out_of_domain_rule,
    joint_score,
    percentile_of,
)


def test_percentiles_are_monotone_and_match_the_empirical_rank():
    rng = np.random.default_rng(0)
    ref = np.concatenate([np.zeros(30), rng.gamma(2.0, 1.0, 970)])  # ties at zero, like BALD on sure images
    quantiles = np.quantile(ref, np.linspace(0, 1, 101))
    x = np.sort(rng.uniform(-1, 12, 5000))
    p = percentile_of(quantiles, x)
    assert (np.diff(p) >= 0).all() and p.min() == 0.0 and p.max() == 100.0
    inside = (x > quantiles[0]) & (x < quantiles[-1])
    empirical = 100 * np.searchsorted(np.sort(ref), x[inside], side="right") / len(ref)
    assert np.abs(p[inside] - empirical).max() < 2.0  # within the 1% grid of stored quantiles
    assert percentile_of([1.0] * 101, [0.5, 1.0, 2.0]).tolist() == [0.0, 50.0, 100.0]


def test_build_save_load_check_and_verdict(tiny_vlm, tmp_path):
    images = random_images(tiny_vlm, n=24, seed=3)
    ys = build_yardstick(tiny_vlm, images, PROMPTS, num_samples=200, reference="random")
    assert set(ys.quantiles) == {*FIGURES, JOINT} and ys.reference == "random (24 images)"
    figures = ys.measure(tiny_vlm, images)
    # the reference images' own percentiles are spread over 0..100 (their median near 50)
    pct = ys.percentiles({k: v.numpy() for k, v in figures.items()})
    assert set(pct) == {*FIGURES, JOINT} and all(35 <= float(np.median(v)) <= 65 for v in pct.values())
    # input_scale is the posterior's f^T A^-1 f, checked against a direct solve
    f = tiny_vlm.adapter.image.augment(tiny_vlm.encode_images(images).activations)
    a = tiny_vlm.posterior.image.covariance_factors()[0]
    assert torch.allclose(figures["input_scale"], ((f @ a) * f).sum(-1))
    loaded = Yardstick.load(ys.save(tmp_path).parent)
    assert loaded.quantiles == ys.quantiles and loaded.prompts == PROMPTS
    loaded.check(tiny_vlm)
    far = {"epistemic": 1e9, "input_scale": 1e9, "entropy": 1e9}
    assert "More unusual" not in ys.verdict(ys.percentiles(far))  # no rule: no out-of-domain claim
    assert ">99%" in ys.verdict(ys.percentiles(far))
    tiny_vlm.posterior.image.prior_precision *= 2
    try:
        with pytest.raises(YardstickError, match="prior_precision_image"):
            loaded.check(tiny_vlm)
    finally:
        tiny_vlm.posterior.image.prior_precision /= 2


def _synthetic_yardstick(rng: np.random.Generator, n: int = 4000) -> tuple[Yardstick, dict[str, np.ndarray]]:
    reference = {"epistemic": rng.gamma(2, 0.01, n), "input_scale": rng.normal(0.5, 0.05, n),
                 "entropy": rng.gamma(3, 0.3, n)}
    ys = Yardstick(prompts=["a"], quantiles={k: np.quantile(v, np.linspace(0, 1, 101)).tolist()
                                             for k, v in reference.items()},
                   num_samples=10, seed=0, posterior={}, reference="synthetic")
    ys.quantiles[JOINT] = np.quantile(joint_score(ys.percentiles(reference)), np.linspace(0, 1, 101)).tolist()
    return ys, reference


def test_rule_fixes_the_false_alarm_rate_and_picks_the_figure_that_sees_every_shift():
    rng = np.random.default_rng(1)
    ys, _ = _synthetic_yardstick(rng)
    held_out = {"epistemic": rng.gamma(2, 0.01, 2000), "input_scale": rng.normal(0.5, 0.05, 2000),
                "entropy": rng.gamma(3, 0.3, 2000)}
    # one style shifts the input scale only, one the epistemic part only
    scale_shift = dict(held_out, input_scale=rng.normal(0.62, 0.05, 2000))
    bald_shift = dict(held_out, epistemic=rng.gamma(2, 0.025, 2000))
    rule = choose_out_of_domain_rule(ys, {"scale": scale_shift, "bald": bald_shift}, 0.1, in_domain=held_out)
    assert rule.figure == JOINT and rule.percentile == 90.0  # the only figure that sees both shifts
    rates = rule.flag_rates
    assert abs(rates["in_domain"] - 0.1) < 0.03  # fixed in advance, measured on images not in the reference
    assert rates["scale"] > 3 * rates["in_domain"] and rates["bald"] > 3 * rates["in_domain"]
    ys.rule = rule
    assert ys.out_of_domain(ys.percentiles(scale_shift)).mean() == pytest.approx(rates["scale"])
    # the held-out images only report: the choice is the same without them
    assert choose_out_of_domain_rule(ys, {"scale": scale_shift, "bald": bald_shift}, 0.1).figure == JOINT
    with pytest.raises(YardstickError, match="false_alarm"):
        choose_out_of_domain_rule(ys, {"scale": scale_shift}, 1.5)


def test_joint_figure_is_calibrated_and_grows_with_either_part():
    rng = np.random.default_rng(2)
    ys, _ = _synthetic_yardstick(rng)
    fresh = {"epistemic": rng.gamma(2, 0.01, 4000), "input_scale": rng.normal(0.5, 0.05, 4000),
             "entropy": rng.gamma(3, 0.3, 4000)}
    joint = ys.percentiles(fresh)[JOINT]
    assert abs(float(np.mean(joint >= 90)) - 0.1) < 0.02  # a fresh in-domain image exceeds the 90th 10% of the time
    base = {"epistemic": 0.02, "input_scale": 0.5, "entropy": 1.0}
    p0 = ys.percentiles(base)[JOINT]
    assert ys.percentiles(dict(base, epistemic=0.08))[JOINT] > p0 < ys.percentiles(dict(base, input_scale=0.6))[JOINT]


def test_verdict_wording_matches_the_percentile():
    rng = np.random.default_rng(3)
    ys, _ = _synthetic_yardstick(rng)
    ys.rule = OutOfDomainRule(JOINT, 90.0)
    usual = ys.verdict({k: float(v) for k, v in ys.percentiles({"epistemic": 0.01, "input_scale": 0.45,
                                                                  "entropy": 1.0}).items()})
    assert usual.startswith("Not flagged: within the range") and "percentile" in usual and "only" not in usual
    odd = ys.verdict({k: float(v) for k, v in ys.percentiles({"epistemic": 1.0, "input_scale": 2.0,
                                                                "entropy": 1.0}).items()})
    assert odd.startswith("Probably outside what this model knows") and ">99%" in odd


def test_malformed_yardstick_files_name_the_field(tmp_path):
    with pytest.raises(YardstickError, match="no yardstick.json"):
        Yardstick.load(tmp_path)
    (tmp_path / "yardstick.json").write_text("[1, 2]")
    with pytest.raises(YardstickError, match="format_version"):
        Yardstick.load(tmp_path)
    good = json.loads((asset_spec(BUNDLED).posterior_dir() / "yardstick.json").read_text())
    for field, value, message in [("quantiles", {"epistemic": [0.0] * 101}, "quantiles"),
                                  ("prompts", [], "prompts"), ("seed", "abc", "malformed")]:
        bad = dict(good, **{field: value})
        (tmp_path / "yardstick.json").write_text(json.dumps(bad))
        with pytest.raises(YardstickError, match=message):
            Yardstick.load(tmp_path)
    bad = dict(good, quantiles=dict(good["quantiles"], entropy=good["quantiles"]["entropy"][::-1]))
    (tmp_path / "yardstick.json").write_text(json.dumps(bad))
    with pytest.raises(YardstickError, match="non-decreasing"):
        Yardstick.load(tmp_path)


def test_bundled_yardstick_fits_the_bundled_posterior_and_reports_its_flag_rates():
    import bayesvlm_explain as bx

    vlm = bx.BayesVLM.from_pretrained(BUNDLED, device="cpu")
    ys = vlm.assets.yardstick  # loaded from beside the posterior and checked against it
    assert isinstance(ys, Yardstick) and ys.prompts == vlm.assets.prompts()
    assert len(ys.prompts) == 93 and ys.rule is not None
    rates = ys.rule.flag_rates
    assert set(rates) == {"in_domain", "noto-v1", "emojione", "openmoji", "openmoji-black", "fluent-hc",
                          "real photographs"}  # photographs: measured after the choice, never in it
    assert ys.rule.percentile == 90.0 and rates["in_domain"] <= 0.15  # 10% fixed in advance; measured on test
    assert all(rates[s] > rates["in_domain"] for s in rates if s != "in_domain")
    # the shipped posterior carries the scale the shift benchmark chose on its calibration split
    post = vlm.require_posterior()
    assert post.metadata["calibration"]["pseudo_count"] == post.image.pseudo_count == post.text.pseudo_count
    assert vlm.assets.pseudo_count == post.image.pseudo_count
    bench = json.loads((Path(__file__).parents[1] / "assets/shift-benchmark/benchmark.json").read_text())
    assert bench["settings"]["pseudo_count"] == post.image.pseudo_count  # the benchmark's own choice
