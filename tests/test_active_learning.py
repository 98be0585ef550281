"""Active learning: the posterior update's Kronecker convention, adaptation, the loop, summaries and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import PROMPTS, random_posterior
from test_evaluate import make_folder

import bayesvlm_explain as bx
from bayesvlm_explain.adapters import Features
from bayesvlm_explain.cli import main
from bayesvlm_explain.estimation import output_factor_naive
from bayesvlm_explain.evaluation.active_learning import (
    STRATEGIES,
    ActiveLearningConfig,
    ActiveLearningData,
    acquisition_scores,
    adapt_projection,
    choose_knobs,
    kron_quadratic,
    learner_sanity,
    parse_knob_grid,
    run_active_learning,
    select_batch,
    summarise,
    summary_markdown,
    t_quantile_975,
)
from bayesvlm_explain.fitting import update_posterior
from bayesvlm_explain.marglik import factor_eigenvalues, log_marginal_likelihood_grad
from bayesvlm_explain.selection import NEIGHBOUR_DISTANCES, epig, neighbour_distances


def features(vlm: bx.BayesVLM, n: int, seed: int) -> Features:
    acts = torch.randn(n, vlm.adapter.image.weight.shape[1], generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)
    return Features(acts, vlm.adapter.image.project(acts).detach())


@pytest.fixture(scope="module")
def setup(tiny_vlm):
    vlm = bx.BayesVLM(tiny_vlm.model, tiny_vlm.tokenizer, tiny_vlm.preprocess, device="cpu", name="tiny")
    post = random_posterior(vlm, prior_precision=5.0, seed=3, scale=0.2)
    for side in post.sides().values():
        side.num_pairs = 40
    vlm.posterior = post
    txt = vlm.encode_prompts(PROMPTS)
    gen = torch.Generator().manual_seed(0)
    data = ActiveLearningData(features(vlm, 40, 1), torch.randint(0, 4, (40,), generator=gen), features(vlm, 12, 2),
                              features(vlm, 16, 3), torch.randint(0, 4, (16,), generator=gen), txt, PROMPTS, "toy")
    return vlm, data


def test_kron_quadratic_is_the_column_stacking_vec_form():
    gen = torch.Generator().manual_seed(0)
    delta, a, b = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((3, 5), (5, 5), (3, 3)))
    a, b = a @ a.T, b @ b.T
    vec = delta.T.flatten()  # column stacking
    assert kron_quadratic(delta, a, b) == pytest.approx(float(vec @ torch.kron(a, b) @ vec), rel=1e-12)


def test_update_posterior_adds_sums_on_a_copy(setup):
    vlm, data = setup
    base = vlm.posterior
    before = (base.image.A.clone(), base.image.B.clone(), base.image.prior_precision)
    support = Features(data.pool.activations[:6], data.pool.embeddings[:6])
    delta = 0.01 * torch.randn(vlm.adapter.image.dim_out, vlm.adapter.image.dim_in,
                               generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    new = update_posterior(vlm, base, support, data.txt, delta)
    x = vlm.adapter.image.augment(support.activations)
    shifted = support.embeddings + x @ delta.T
    a_ref = (math.sqrt(40) * base.image.A + sum(torch.outer(r, r) for r in x)) / math.sqrt(46)
    b_ref = (math.sqrt(40) * base.image.B
             + output_factor_naive(shifted, data.txt.embeddings, vlm.adapter.logit_scale)) / math.sqrt(46)
    torch.testing.assert_close(new.image.A, a_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(new.image.B, b_ref, rtol=1e-8, atol=1e-10)
    assert new.image.num_pairs == 46 and new.image is not base.image
    theta_sq = float((vlm.adapter.image.weight_with_bias().detach().double() + delta).square().sum())
    grad = log_marginal_likelihood_grad(factor_eigenvalues(new.image.A), factor_eigenvalues(new.image.B),
                                        1.0, new.image.prior_precision, theta_sq)
    assert abs(float(grad)) < 1e-6  # λ is the marginal-likelihood optimum at the adapted weights
    torch.testing.assert_close(new.text.B, base.text.B)
    assert torch.equal(base.image.A, before[0]) and torch.equal(base.image.B, before[1])
    assert base.image.prior_precision == before[2] and vlm.posterior is base


def test_adaptation_fits_the_support_set_and_the_prior_holds_it(setup):
    vlm, data = setup
    support = Features(data.pool.activations[:8], data.pool.embeddings[:8])
    labels = data.pool_labels[:8]

    def loss(delta):
        x = vlm.adapter.image.augment(support.activations)
        logits = vlm.map_logits(Features(support.activations, support.embeddings + x @ delta.T), data.txt)
        return float(torch.nn.functional.cross_entropy(logits, labels))

    free = adapt_projection(vlm, support, labels, data.txt, steps=20, lr=1e-2)
    held = adapt_projection(vlm, support, labels, data.txt, steps=20, lr=1e-2, prior=vlm.posterior.image,
                            prior_weight=1e6)
    zero = torch.zeros_like(free)
    assert loss(free) < loss(zero) - 0.05
    assert held.norm() < 0.2 * free.norm()
    assert torch.equal(adapt_projection(vlm, support, labels, data.txt, steps=0, lr=1e-2), zero)


def test_epig_scores_use_joint_draws(setup):
    vlm, data = setup
    scores = acquisition_scores(vlm, "epig", data.pool, data.target, data.txt, 32, torch.Generator().manual_seed(4))
    both = Features(torch.cat([data.pool.activations, data.target.activations]),
                    torch.cat([data.pool.embeddings, data.target.embeddings]))
    probs = torch.softmax(vlm.sample_logits_features(both, data.txt, 32, torch.Generator().manual_seed(4)), -1)
    torch.testing.assert_close(scores, epig(probs[:, :40], probs[:, 40:]))
    with pytest.raises(ValueError, match="unknown strategy"):
        acquisition_scores(vlm, "margin", data.pool, data.target, data.txt, 4, torch.Generator())


def test_loop_rows_are_complete_deterministic_and_leave_the_model_alone(setup):
    vlm, data = setup
    post = vlm.posterior
    config = ActiveLearningConfig(k=3, rounds=2, seeds=(0, 1), num_samples=16, steps=5, num_targets=8,
                                  strategies=STRATEGIES, sanity=False)
    payload = run_active_learning(vlm, data, config)
    rows = payload["rows"]
    assert len(rows) == 6 * 2 * 3
    assert {(r["strategy"], r["budget"], r["seed"]) for r in rows} == {
        (s, b, seed) for s in STRATEGIES for b in (0, 3, 6) for seed in (0, 1)}
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["ece"] <= 1 and r["support_classes"] <= r["budget"]
    start = {r["accuracy"] for r in rows if r["budget"] == 0}
    assert len(start) == 1  # every run starts from the same model
    assert run_active_learning(vlm, data, config)["rows"] == rows
    assert vlm.posterior is post and post.image.num_pairs == 40
    assert len(payload["summary"]) == 6 * 3 and payload["sanity"] is None
    with pytest.raises(ValueError, match="unknown strategies"):
        run_active_learning(vlm, data, ActiveLearningConfig(strategies=("coreset",)))


def test_summary_intervals_and_paired_differences():
    rows = [{"strategy": s, "budget": 10, "seed": seed, "accuracy": acc, "ece": 0.1}
            for s, accs in (("random", (0.2, 0.3, 0.4)), ("bald", (0.3, 0.5, 0.5))) for seed, acc in enumerate(accs)]
    summary = {r["strategy"]: r for r in summarise(rows)}
    half = 4.303 * 0.1 / math.sqrt(3)
    assert summary["random"]["accuracy"] == pytest.approx(0.3)
    assert summary["random"]["accuracy_ci_high"] == pytest.approx(0.3 + half)
    diffs = torch.tensor([0.1, 0.2, 0.1], dtype=torch.float64)
    assert summary["bald"]["accuracy_minus_random"] == pytest.approx(float(diffs.mean()))
    lo, hi = summary["bald"]["accuracy_minus_random_ci"]
    assert hi - lo == pytest.approx(2 * 4.303 * float(diffs.std()) / math.sqrt(3))
    assert "accuracy_minus_random" not in summary["random"]
    assert t_quantile_975(4) == 2.776 and t_quantile_975(30) == pytest.approx(2.042, abs=2e-3)
    assert t_quantile_975(120) == pytest.approx(1.980, abs=2e-3)


def test_cli_on_own_folders(tmp_path, capsys):
    pool = make_folder(tmp_path / "pool", per_class=3)
    test = make_folder(tmp_path / "test", per_class=2, corrupt=False)
    val = make_folder(tmp_path / "val", per_class=2, corrupt=False)
    rc = main(["active-learning", "--pool", str(pool), "--test", str(test), "--val", str(val), "--template",
               "an emoji of {}", "--out", str(tmp_path / "out"), "--feature-cache", str(tmp_path / "cache"), "--k",
               "2", "--rounds", "1", "--seeds", "0,1", "--strategies", "random,map_entropy", "--mc-samples", "8",
               "--knob-grid", "0.5:3:0.01,0:4:0.02"])
    assert rc == 0
    payload = json.loads((tmp_path / "out" / "active_learning.json").read_text())
    assert len(payload["rows"]) == 2 * 2 * 2
    assert [(r["prior_weight"], r["steps"]) for r in payload["knobs"]] == [(0.5, 3), (0.0, 4)]
    assert payload["settings"]["steps"] in (3, 4) and payload["sanity"]["all_pool"]["labels"] == 9
    assert all({"strategy", "budget", "seed", "accuracy", "ece"} <= set(r) for r in payload["rows"])
    assert (tmp_path / "out" / "active_learning.png").stat().st_size > 0
    assert "| map_entropy | 2 |" in (tmp_path / "out" / "active_learning.md").read_text()
    assert main(["active-learning", "--pool", str(pool), "--out", str(tmp_path / "o2")]) == 2
    assert "--pool needs --test" in capsys.readouterr().err


def with_val(data: ActiveLearningData, vlm: bx.BayesVLM, **extra) -> ActiveLearningData:
    gen = torch.Generator().manual_seed(9)
    return ActiveLearningData(data.pool, data.pool_labels, data.target, data.test, data.test_labels, data.txt,
                              data.prompts, "toy with val", val=features(vlm, 12, 7),
                              val_labels=torch.randint(0, 4, (12,), generator=gen), **extra)


def test_knobs_are_chosen_on_validation_never_on_test(setup):
    vlm, data = setup
    data = with_val(data, vlm)
    config = ActiveLearningConfig(knob_grid=parse_knob_grid("0:40:0.05, 1e6:5:0.01"), knob_budgets=(4, 8),
                                  knob_seeds=(0, 1))
    best, table = choose_knobs(vlm, data, config)
    assert [r["steps"] for r in table] == [40, 5]
    assert best == max(((r["prior_weight"], r["steps"], r["lr"]) for r in table),
                       key=lambda k: next(r["val_map_accuracy"] for r in table if r["steps"] == k[1]))
    shuffled = ActiveLearningData(data.pool, data.pool_labels, data.target, data.test, data.test_labels.flip(0),
                                  data.txt, data.prompts, val=data.val, val_labels=data.val_labels)
    assert choose_knobs(vlm, shuffled, config) == (best, table)  # test labels play no part
    relabelled = ActiveLearningData(data.pool, data.pool_labels, data.target, data.test, data.test_labels,
                                    data.txt, data.prompts, val=data.val, val_labels=(data.val_labels + 1) % 4)
    assert choose_knobs(vlm, relabelled, config)[1] != table  # validation labels do
    with pytest.raises(ValueError, match="validation split"):
        choose_knobs(vlm, setup[1], config)
    with pytest.raises(ValueError, match="prior_weight:steps:lr"):
        parse_knob_grid("0.1:30")


def test_sanity_reports_support_fit_and_ceilings(setup):
    vlm, data = setup
    in_target = torch.arange(40) % 2 == 0
    data = with_val(data, vlm, pool_in_target=in_target)
    config = ActiveLearningConfig(prior_weight=0.0, steps=150, lr=0.05, sanity_budget=8)
    sanity = learner_sanity(vlm, data, config, seeds=(0, 1))
    assert sanity["random_pool"]["support_fit"] == 1.0  # 8 labels, plain fine-tuning: memorised
    assert sanity["checks"]["support_fit_at_least_0.9"]
    assert sanity["all_pool"]["labels"] == 40 and sanity["all_target"]["labels"] == 20
    assert sanity["random_target"]["labels"] == 8
    zero = float((vlm.map_logits(data.test, data.txt).argmax(-1) == data.test_labels).double().mean())
    assert sanity["zero_shot"]["map_accuracy"] == pytest.approx(zero)
    text = summary_markdown({"summary": [], "sanity": sanity, "knobs": []})
    assert "support-set accuracy 1.000" in text and "all pool" in text and "check" in text


def test_split_hygiene_is_checked(setup):
    vlm, data = setup
    groups = [f"pool/{i}" for i in range(40)]
    test_groups = [f"test/{i}" for i in range(16)]
    ok = with_val(data, vlm, pool_groups=groups, test_groups=test_groups)
    assert ok.pool_groups == groups
    with pytest.raises(ValueError, match="split leak: 1 test images are also in the pool"):
        with_val(data, vlm, pool_groups=groups, test_groups=["pool/3"] + test_groups[1:])
    with pytest.raises(ValueError, match="split leak: 1 val images are also in the pool"):
        with_val(data, vlm, pool_groups=groups, val_groups=["pool/3"] + [f"v/{i}" for i in range(11)])
    with pytest.raises(ValueError, match="12 images but 11 labels"):
        ActiveLearningData(data.pool, data.pool_labels, data.target, data.test, data.test_labels, data.txt,
                           data.prompts, val=features(vlm, 12, 1), val_labels=torch.zeros(11).long())


def constructed_pool(vlm: bx.BayesVLM, txt: Features) -> tuple[Features, Features]:
    """Pool and targets whose right picks are known: pool row 2 (and target row 0) is orthogonal to every class
    prompt (a uniform MAP prediction, the highest entropy); the other rows are a class prompt scaled (certain).
    Pool row 4 is the nearest to target 0."""
    d = txt.embeddings.shape[1]
    q, _ = torch.linalg.qr(torch.cat([txt.embeddings.T, torch.eye(d, dtype=torch.float64)], 1))
    ortho = q[:, txt.embeddings.shape[0]]  # orthogonal to the span of the class embeddings
    emb = torch.stack([3 * txt.embeddings[0], 3 * txt.embeddings[1], ortho, 3 * txt.embeddings[2],
                       ortho + 0.02 * txt.embeddings[3], 3 * txt.embeddings[3]])
    acts = torch.zeros(6, vlm.adapter.image.weight.shape[1], dtype=torch.float64)
    targets = Features(torch.zeros(2, acts.shape[1], dtype=torch.float64),
                       torch.stack([ortho + 0.01 * txt.embeddings[3], 3 * txt.embeddings[0]]))
    return Features(acts, emb), targets


@pytest.mark.parametrize("strategy", ["map_entropy", "entropy"])
def test_entropy_strategies_pick_the_uniform_prediction(setup, strategy):
    vlm, data = setup
    pool, targets = constructed_pool(vlm, data.txt)
    picks = select_batch(vlm, strategy, pool, targets, data.txt, 1, torch.zeros(0, dtype=torch.long), 64,
                         torch.Generator().manual_seed(0))
    assert picks.tolist() in ([2], [4])  # the two near-uniform rows
    two = select_batch(vlm, strategy, pool, targets, data.txt, 2, torch.zeros(0, dtype=torch.long), 64,
                       torch.Generator().manual_seed(0))
    assert sorted(two.tolist()) == [2, 4]


def test_targeted_strategy_maps_the_most_uncertain_target_to_its_nearest_pool_input(setup):
    vlm, data = setup
    pool, targets = constructed_pool(vlm, data.txt)
    picks = select_batch(vlm, "targeted_map_entropy", pool, targets, data.txt, 1, torch.zeros(0, dtype=torch.long),
                         8, torch.Generator().manual_seed(0))
    assert picks.tolist() == [4]  # target 0 is the uncertain one; pool 4 is its nearest neighbour
    second = select_batch(vlm, "targeted_map_entropy", pool, targets, data.txt, 2, torch.tensor([4]), 8,
                          torch.Generator().manual_seed(0))
    assert second.tolist() == [2, 0]  # 4 is taken: target 0 -> 2, then target 1 (class 0) -> pool 0


def test_random_strategy_takes_every_remaining_input_once(setup):
    vlm, data = setup
    pool, targets = constructed_pool(vlm, data.txt)
    picks = select_batch(vlm, "random", pool, targets, data.txt, 4, torch.tensor([1, 3]), 8,
                         torch.Generator().manual_seed(0))
    assert sorted(picks.tolist()) == [0, 2, 4, 5]
    firsts = {int(select_batch(vlm, "random", pool, targets, data.txt, 1, torch.zeros(0, dtype=torch.long), 8,
                               torch.Generator().manual_seed(s))[0]) for s in range(40)}
    assert firsts == set(range(6))  # every input can come first


def test_targeted_strategy_by_wasserstein_matches_the_uncertainty_too(setup):
    """Two pool inputs with the target's mean embedding but different activations (so different posterior
    spreads): cosine cannot tell them apart (the first wins), the 2-Wasserstein distance takes the one whose
    activation, and so spread, is the target's (distance 0)."""
    vlm, data = setup
    p = vlm.adapter.image.weight.shape[1]
    gen = torch.Generator().manual_seed(5)
    acts = torch.randn(3, p, generator=gen, dtype=torch.float64) * torch.tensor([[0.1], [3.0], [1.0]],
                                                                                dtype=torch.float64)
    emb = data.txt.embeddings[:3].clone()
    emb[1] = emb[0]
    pool = Features(acts, emb)
    target = Features(acts[1:2], emb[:1])
    dist = neighbour_distances(vlm, target, pool, "wasserstein")
    assert float(dist[0, 1]) == pytest.approx(0.0, abs=1e-12) and float(dist[0, 0]) > 0.01
    none = torch.zeros(0, dtype=torch.long)
    pick = {d: select_batch(vlm, "targeted_map_entropy", pool, target, data.txt, 1, none, 8,
                            torch.Generator().manual_seed(0), d).tolist() for d in NEIGHBOUR_DISTANCES}
    assert pick == {"cosine": [0], "wasserstein": [1]}
    # the spread term is tr(B̃⁻¹)(√s₁ − √s₂)² with s = x̃ᵀÃ⁻¹x̃, from the model's image posterior
    side = vlm.require_posterior().image
    s = side.input_scales(vlm.adapter.image.augment(acts))
    expected = float(side.covariance_factors()[1].trace()) * (s[1].sqrt() - s[0].sqrt()).square()
    assert float(dist[0, 0]) == pytest.approx(float(expected), rel=1e-9)
    with pytest.raises(ValueError, match="unknown neighbour distance"):
        neighbour_distances(vlm, target, pool, "euclid")
    with pytest.raises(ValueError, match="unknown neighbour distance"):
        run_active_learning(vlm, data, ActiveLearningConfig(neighbour_distance="euclid"))


def test_cli_offers_the_library_neighbour_distances():
    from bayesvlm_explain.cli import build_parser

    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["active-learning"]._actions
                  if a.dest == "neighbour_distance")
    assert tuple(action.choices) == NEIGHBOUR_DISTANCES and action.default == "cosine"


def test_the_learner_knobs_reach_the_learner(setup):
    """``run_active_learning``'s prior weight, steps and lr are the learner's: 0 steps (or lr 0, or a huge
    prior weight) leave the deterministic prediction at zero-shot after labels; plain fine-tuning moves it."""
    vlm, data = setup

    def map_accuracies(**knobs: float) -> list[float]:
        config = ActiveLearningConfig(k=8, rounds=1, seeds=(0,), strategies=("random",), sanity=False, **knobs)
        payload = run_active_learning(vlm, data, config)
        assert {k: payload["settings"][k] for k in knobs} == knobs
        return [r["map_accuracy"] for r in payload["rows"]]

    zero = map_accuracies(steps=0)
    assert zero[0] == zero[1]
    assert map_accuracies(lr=0.0, steps=20) == zero
    assert map_accuracies(prior_weight=1e9, steps=20, lr=0.01) == zero
    moved = map_accuracies(prior_weight=0.0, steps=200, lr=0.05)
    assert moved[0] == zero[0] and moved[1] != zero[1]
