"""Tests of the prior-precision marginal likelihood (bayesvlm_explain.marglik; method.md §2.4–2.5)."""

from __future__ import annotations

import math

import mpmath  # installed with torch (torch → sympy → mpmath)
import pytest
import torch

from bayesvlm_explain.marglik import (
    factor_eigenvalues,
    implied_theta_sq_norm,
    log_marginal_likelihood,
    log_marginal_likelihood_grad,
    optimize_prior_precision,
)

F64 = torch.float64


def random_spd(k: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(k, 2 * k, generator=g, dtype=F64)
    return scale * (m @ m.T) / k


def spectra(p: int = 40, q: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Spread-out spectra like the shipped CLIP factors (S5: A 40–7e4, B 0–437)."""
    g = torch.Generator().manual_seed(seed)
    eig_a = torch.exp(torch.empty(p, dtype=F64).uniform_(math.log(40), math.log(7e4), generator=g))
    eig_b = torch.cat([torch.zeros(2, dtype=F64), torch.rand(q - 2, generator=g, dtype=F64) * 437])
    return eig_a, eig_b


def test_exact_logdet_equals_kron_logdet_and_reference_does_not():
    p, q, n, lam, S = 5, 3, 2.7, 0.8, 1.9
    A, B = random_spd(p, 1), random_spd(q, 2)
    At = math.sqrt(n) * A + math.sqrt(lam) * torch.eye(p, dtype=F64)
    Bt = math.sqrt(n) * B + math.sqrt(lam) * torch.eye(q, dtype=F64)
    true_logdet = float(torch.logdet(torch.kron(At, Bt)))
    eig_a, eig_b = factor_eigenvalues(A), factor_eigenvalues(B)
    prior = -0.5 * lam * S + 0.5 * p * q * math.log(lam)
    exact = log_marginal_likelihood(eig_a, eig_b, n, lam, S, mode="exact")
    ref = log_marginal_likelihood(eig_a, eig_b, n, lam, S, mode="reference")
    assert isinstance(exact, float)
    assert exact == pytest.approx(prior - 0.5 * true_logdet, rel=1e-12, abs=1e-10)
    # reference (bug B1): p·logdet Ã + q·logdet B̃ without the ½ — not the Kronecker log-det
    ref_logdet = p * float(torch.logdet(At)) + q * float(torch.logdet(Bt))
    assert ref == pytest.approx(prior - ref_logdet, rel=1e-12, abs=1e-10)
    assert abs(ref_logdet - true_logdet) > 1.0
    assert abs(ref - exact) > 1.0


def test_factor_eigenvalues_symmetrises_and_clamps():
    B = random_spd(6, 3)
    B_bad = B.clone()
    B_bad[0, 1] += 1e-3  # slightly asymmetric, as the shipped B files (B14)
    eig = factor_eigenvalues(B_bad)
    torch.testing.assert_close(eig, torch.linalg.eigvalsh(0.5 * (B_bad + B_bad.T)).clamp_min(0))
    neg = torch.diag(torch.tensor([-1e-4, 1.0, 2.0], dtype=F64))
    assert factor_eigenvalues(neg).min() == 0.0
    assert factor_eigenvalues(neg, clamp=False).min() < 0


@pytest.mark.parametrize("mode", ["exact", "reference"])
def test_grad_matches_finite_differences(mode):
    eig_a, eig_b = spectra()
    for lam in (1e-2, 3.0, 500.0, 2e5):
        t, h = math.log(lam), 1e-5
        fp = log_marginal_likelihood(eig_a, eig_b, 10.0, math.exp(t + h), 60.0, mode=mode)
        fm = log_marginal_likelihood(eig_a, eig_b, 10.0, math.exp(t - h), 60.0, mode=mode)
        g = log_marginal_likelihood_grad(eig_a, eig_b, 10.0, lam, 60.0, mode=mode)
        assert g == pytest.approx((fp - fm) / (2 * h), rel=1e-6, abs=1e-4)


def test_vectorised_over_lambda():
    eig_a, eig_b = spectra()
    lams = torch.tensor([[0.5, 5.0], [50.0, 5000.0]], dtype=F64)
    vals = log_marginal_likelihood(eig_a, eig_b, 1.0, lams, 10.0)
    assert vals.shape == (2, 2)
    for lam, v in zip(lams.flatten(), vals.flatten(), strict=True):
        assert float(v) == pytest.approx(log_marginal_likelihood(eig_a, eig_b, 1.0, float(lam), 10.0), rel=1e-14)


@pytest.mark.parametrize("mode", ["exact", "reference"])
@pytest.mark.parametrize("n,S", [(1.0, 63.66), (10.0, 42.13), (1.0, 0.5)])
def test_optimum_matches_dense_grid_and_is_stationary(mode, n, S):
    eig_a, eig_b = spectra()
    lam, curve = optimize_prior_precision(eig_a, eig_b, n, S, mode=mode)
    assert curve.shape == (201, 2) and curve.dtype == F64
    assert 1e-4 < lam < 1e8
    dense = torch.logspace(-4, 8, 200_001, dtype=F64)  # spacing 1.4e-4 in log λ
    vals = log_marginal_likelihood(eig_a, eig_b, n, dense, S, mode=mode)
    lam_grid = float(dense[vals.argmax()])
    assert abs(math.log(lam / lam_grid)) < 2e-4
    best = log_marginal_likelihood(eig_a, eig_b, n, lam, S, mode=mode)
    assert best >= float(vals.max()) - 1e-9 * abs(best)
    assert best >= float(curve[:, 1].max())
    d = eig_a.numel() * eig_b.numel()
    g = log_marginal_likelihood_grad(eig_a, eig_b, n, lam, S, mode=mode)
    assert abs(g) < 1e-8 * d  # stationary (dF/dlogλ terms are O(d))


def realistic_theta_sq_norm(eig_a: torch.Tensor, eig_b: torch.Tensor) -> float:
    """‖θ*‖² with the per-parameter size of CLIP-B/32's image projection (63.66 over 768·512, S5)."""
    return 63.66 * eig_a.numel() * eig_b.numel() / (768 * 512)


def test_exact_and_reference_optima_differ():
    eig_a, eig_b = spectra()
    S = realistic_theta_sq_norm(eig_a, eig_b)
    for n in (1.0, 10.0):
        lam_exact, _ = optimize_prior_precision(eig_a, eig_b, n, S, mode="exact")
        lam_ref, _ = optimize_prior_precision(eig_a, eig_b, n, S, mode="reference")
        # the bug lowers λ (method.md §2.5 table); for q/2 < p < 2q dF_ref/dlogλ < dF_exact/dlogλ everywhere
        assert lam_ref < lam_exact / 1.05


@pytest.mark.parametrize("mode", ["exact", "reference"])
def test_recover_theta_norm_from_lambda_and_back(mode):
    # method.md §2.5: from a λ that is a maximiser, the stationarity condition gives ‖θ*‖²;
    # re-optimising with that ‖θ*‖² returns the same λ.
    eig_a, eig_b = spectra(p=64, q=48, seed=5)
    for n, lam0 in [(1.0, 1708.9), (10.0, 2997.88), (1.0, 0.37)]:
        S = implied_theta_sq_norm(eig_a, eig_b, n, lam0, mode=mode)
        assert S > 0
        assert log_marginal_likelihood_grad(eig_a, eig_b, n, lam0, S, mode=mode) == pytest.approx(0.0, abs=1e-7)
        lam, _ = optimize_prior_precision(eig_a, eig_b, n, S, mode=mode)
        assert lam == pytest.approx(lam0, rel=1e-8)
        if lam0 > 1.0:  # at tiny λ both objectives are ≈ −½λS + ½d log λ; at realistic λ they differ
            other = "exact" if mode == "reference" else "reference"
            lam_other, _ = optimize_prior_precision(eig_a, eig_b, n, S, mode=other)
            ratio = lam_other / lam0
            assert ratio > 1.05 if mode == "reference" else ratio < 1 / 1.05


def test_bounds_are_returned_when_the_optimum_is_outside():
    eig_a, eig_b = spectra()
    # tiny ‖θ*‖²: the optimum is at huge λ
    lam_hi, _ = optimize_prior_precision(eig_a, eig_b, 1.0, 1e-9, bounds=(1e-2, 1e3))
    assert lam_hi == 1e3
    lam_lo, _ = optimize_prior_precision(eig_a, eig_b, 1.0, 1e9, bounds=(1.0, 1e3))
    assert lam_lo == 1.0
    with pytest.raises(ValueError):
        optimize_prior_precision(eig_a, eig_b, 1.0, 1.0, bounds=(10.0, 1.0))
    with pytest.raises(ValueError):
        log_marginal_likelihood(eig_a, eig_b, 1.0, 1.0, 1.0, mode="buggy")
    with pytest.raises(ValueError):
        log_marginal_likelihood(eig_a, eig_b, 1.0, -1.0, 1.0)


def _rotate(eig: torch.Tensor, seed: int) -> torch.Tensor:
    """Q diag(eig) Qᵀ for a random orthogonal Q (float64)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(eig.numel(), eig.numel(), generator=g, dtype=F64))
    return (q * eig) @ q.T


@pytest.mark.parametrize("mode", ["exact", "reference"])
def test_optimum_is_accurate_to_high_precision_with_a_saturated_B(mode):
    """docs/numerics.md: a B from a saturated fit has eigenvalues down to ~1e-18 of its largest. The
    fp64 ``eigvalsh`` gets those only to ≈ 1e-16·‖B‖ absolute, which moves each log(√n β + √λ) by
    ≤ √n·1e-16‖B‖/√λ: λ* agrees with the λ* of the exact spectrum, and both with a 50-digit mpmath root
    of dF/dlogλ, to ≤ 1e-10 relative. A float32-stored factor (upcast inside) stays within 1e-6."""
    eig_a = torch.logspace(math.log10(40), math.log10(7e4), 64, dtype=F64)
    eig_b = torch.logspace(-18, 2, 48, dtype=F64)
    S = realistic_theta_sq_norm(eig_a, eig_b)
    n = 10.0
    lam_exact, _ = optimize_prior_precision(eig_a, eig_b, n, S, mode=mode)
    fac_a, fac_b = _rotate(eig_a, 1), _rotate(eig_b, 2)
    computed = factor_eigenvalues(fac_b)
    assert float((computed - eig_b).abs().max()) < 1e-12 * float(eig_b.max())
    assert float(((computed[:3] - eig_b[:3]).abs() / eig_b[:3]).min()) > 0.5  # the smallest are lost to round-off
    lam_eigh, _ = optimize_prior_precision(factor_eigenvalues(fac_a), computed, n, S, mode=mode)
    assert abs(lam_eigh / lam_exact - 1) < 1e-10
    lam_32, _ = optimize_prior_precision(
        factor_eigenvalues(fac_a.float()), factor_eigenvalues(fac_b.float()), n, S, mode=mode
    )
    assert abs(lam_32 / lam_exact - 1) < 1e-6

    mpmath.mp.dps = 50
    p, q = eig_a.numel(), eig_b.numel()
    wa, wb, kappa = (q, p, mpmath.mpf(1) / 2) if mode == "exact" else (p, q, mpmath.mpf(1))
    terms = [(mpmath.sqrt(n) * mpmath.mpf(float(e)), wa) for e in eig_a]
    terms += [(mpmath.sqrt(n) * mpmath.mpf(float(e)), wb) for e in eig_b]

    def grad(t):  # dF/dlogλ (marglik module docstring), in 50 digits
        lam = mpmath.e**t
        s = mpmath.sqrt(lam)
        return -lam * S / 2 + mpmath.mpf(p * q) / 2 - kappa / 2 * mpmath.fsum(w * s / (c + s) for c, w in terms)

    lam_mp = mpmath.e ** mpmath.findroot(grad, math.log(lam_exact))
    assert abs(lam_exact / float(lam_mp) - 1) < 1e-10
