"""Acquisition functions against their definitions on toy problems with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from bayesvlm_explain.selection import (
    bald,
    cosine_distances,
    epig,
    map_entropy,
    predictive_entropy,
    targeted_picks,
    top_k,
    wasserstein_distances,
)


def _onehots(labels: list[int], c: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), c).double()  # [S, C]


def test_entropy_and_bald_known_values():
    s = 8
    agree = torch.full((s, 3), 1 / 3, dtype=torch.float64)  # every draw uniform: all aleatoric
    split = _onehots([0, 1] * (s // 2), 3)  # draws disagree with certainty: all epistemic
    sure = _onehots([2] * s, 3)  # certain and agreed: nothing
    probs = torch.stack([agree, split, sure], dim=1)  # [S, 3, C]
    torch.testing.assert_close(predictive_entropy(probs), torch.tensor([math.log(3), math.log(2), 0.0],
                                                                       dtype=torch.float64))
    torch.testing.assert_close(bald(probs), torch.tensor([0.0, math.log(2), 0.0], dtype=torch.float64))


def test_epig_toy_correlated_independent_and_certain():
    """Target: a label that flips with the draw. Pool 0 flips with it (EPIG = log 2), pool 1 flips on an
    independent pattern (0), pool 2 is certain (0)."""
    s = 8
    flips = [0, 1] * 4
    other = [0, 0, 1, 1] * 2  # balanced and independent of ``flips`` over the 8 draws
    target = _onehots(flips, 2)[:, None]  # [S, 1, C]
    pool = torch.stack([_onehots(flips, 2), _onehots(other, 2), _onehots([1] * s, 2)], dim=1)
    torch.testing.assert_close(epig(pool, target), torch.tensor([math.log(2), 0.0, 0.0], dtype=torch.float64))


def test_epig_matches_a_naive_loop_and_needs_shared_draws():
    gen = torch.Generator().manual_seed(0)
    s, n, m, c = 64, 5, 4, 3
    logits = torch.randn(s, 1, 1, c, dtype=torch.float64, generator=gen) * 3  # a shared "weight" per draw
    pool = torch.softmax(logits + torch.randn(1, n, 1, c, dtype=torch.float64, generator=gen), -1)[:, :, 0]
    target = torch.softmax(logits + torch.randn(1, m, 1, c, dtype=torch.float64, generator=gen), -1)[:, :, 0]
    naive = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        for j in range(m):
            joint = torch.zeros(c, c, dtype=torch.float64)
            for k in range(s):
                joint += torch.outer(pool[k, i], target[k, j]) / s
            py, pt = joint.sum(1), joint.sum(0)
            naive[i] += (joint * (joint.log() - torch.outer(py, pt).log())).sum() / m  # mutual information
    torch.testing.assert_close(epig(pool, target, chunk_elements=50), naive)
    assert (naive > 0.05).all()
    # draws taken independently for pool and targets (the reference's B4) lose the information
    shuffled = pool[torch.randperm(s, generator=gen)]
    assert (epig(shuffled, target) < 0.5 * naive).all()


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="same posterior draws"):
        epig(torch.full((4, 2, 3), 1 / 3), torch.full((5, 2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"\[S, N, C\]"):
        bald(torch.full((2, 3), 0.5))


def test_top_k_skips_excluded_and_breaks_ties_by_index():
    scores = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.2])
    assert top_k(scores, 3).tolist() == [3, 1, 2]
    assert top_k(scores, 2, exclude=torch.tensor([3, 1])).tolist() == [2, 4]
    with pytest.raises(ValueError, match="cannot select 5 of 4"):
        top_k(scores, 5, exclude=torch.tensor([0]))


def test_map_entropy_known_values_and_shape_check():
    probs = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(map_entropy(probs), torch.tensor([math.log(3), 0.0, math.log(2)],
                                                                dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        map_entropy(probs[None])


def test_targeted_picks_map_the_best_targets_to_their_nearest_free_pool_inputs():
    pool = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.1]], dtype=torch.float64)
    targets = torch.tensor([[0.1, 1.0], [1.0, 0.05]], dtype=torch.float64)
    scores = torch.tensor([0.2, 0.9])  # target 1 first
    dist = cosine_distances(targets, pool)
    assert targeted_picks(scores, dist, 1).tolist() == [0]
    assert targeted_picks(scores, dist, 2).tolist() == [0, 1]
    assert targeted_picks(scores, dist, 2, exclude=torch.tensor([0])).tolist() == [2, 1]
    # more picks than targets: the targets are visited again in score order, never repeating a pool input
    assert targeted_picks(scores, dist, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot select 4 of 3"):
        targeted_picks(scores, dist, 4, exclude=torch.tensor([1]))
    with pytest.raises(ValueError, match="disagree"):
        targeted_picks(scores[:1], dist, 1)


def test_cosine_distances_known_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    r = 1 - 1 / math.sqrt(2)
    torch.testing.assert_close(cosine_distances(a, b), torch.tensor([[0.0, r, 2.0], [1.0, r, 1.0]],
                                                                    dtype=torch.float64))


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(m)
    return v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T


def test_wasserstein_distance_is_the_gaussian_w2_and_the_references_diagonal_form():
    """Against the general formula W2² = |Δμ|² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½) for covariances s·B⁻¹, and
    against the reference's diagonal form |Δμ|² + |σ1 − σ2|² (method.md §6)."""
    gen = torch.Generator().manual_seed(0)
    d = 4
    root = torch.randn(d, d, generator=gen, dtype=torch.float64)
    b_inv = root @ root.T + 0.1 * torch.eye(d, dtype=torch.float64)
    mu_t, mu_p = torch.randn(2, d, generator=gen, dtype=torch.float64), torch.randn(3, d, generator=gen,
                                                                                    dtype=torch.float64)
    s_t, s_p = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([0.1, 2.0, 4.0], dtype=torch.float64)
    got = wasserstein_distances(mu_t, s_t, mu_p, s_p, float(b_inv.trace()))
    for i in range(2):
        for j in range(3):
            c1, c2 = s_t[i] * b_inv, s_p[j] * b_inv
            h = _sqrtm(c1)
            general = (mu_t[i] - mu_p[j]).square().sum() + (c1 + c2 - 2 * _sqrtm(h @ c2 @ h)).trace()
            diag = (mu_t[i] - mu_p[j]).square().sum() + ((s_t[i] * b_inv.diagonal()).sqrt()
                                                         - (s_p[j] * b_inv.diagonal()).sqrt()).square().sum()
            torch.testing.assert_close(got[i, j], general)
            torch.testing.assert_close(got[i, j], diag)
    # equal means: only the spread counts; equal spreads: the squared Euclidean distance
    same = wasserstein_distances(mu_t[:1], torch.tensor([1.0]), mu_t[:1], torch.tensor([4.0]), 3.0)
    torch.testing.assert_close(same, torch.tensor([[3.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="scales must be"):
        wasserstein_distances(mu_t, s_p, mu_p, s_p, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        wasserstein_distances(mu_t, -s_t, mu_p, s_p, 1.0)
