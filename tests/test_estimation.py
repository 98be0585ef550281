"""Tests of the KFAC estimation math (bayesvlm_explain.estimation; method.md §2.1–2.2, §7.2–7.3)."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian, jacobian

from bayesvlm_explain.estimation import (
    KFACAccumulator,
    OutputFactorStream,
    input_factor,
    output_factor,
    output_factor_naive,
)

F64 = torch.float64
CASES = [("infonce", None), ("sigmoid", -3.0)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def random_case(B: int, C: int, D: int, seed: int = 0, dtype: torch.dtype = F64):
    g = torch.Generator().manual_seed(seed)
    # un-normalised sources with norms spread over ~[0.1, 3] so that the 1/r² factors matter
    x = torch.randn(B, D, generator=g, dtype=F64) * (0.1 + 3 * torch.rand(B, 1, generator=g, dtype=F64))
    y = torch.randn(C, D, generator=g, dtype=F64) * (0.5 + torch.rand(C, 1, generator=g, dtype=F64))
    return x.to(dtype), y.to(dtype)


# ---------------------------------------------------------------------------------------------------
# fast vs naive


@pytest.mark.parametrize("likelihood,bias", CASES)
@pytest.mark.parametrize("tau", [5.0, 100.0])
def test_fast_matches_naive_fp64_with_chunking(likelihood, bias, tau):
    x, y = random_case(B=37, C=60, D=16, seed=1)
    naive = output_factor_naive(x, y, tau, likelihood=likelihood, logit_bias=bias)
    for chunk in (1, 8, 37, 1000):  # 37 sources over several source chunks, incl. a partial last one
        fast = output_factor(x, y, tau, likelihood=likelihood, logit_bias=bias, chunk_size=chunk)
        assert fast.dtype == F64 and fast.shape == (16, 16)
        assert rel_err(fast, naive) < 1e-8, (chunk, rel_err(fast, naive))
        assert torch.equal(fast, fast.T)
    # the result is a sum of PSD matrices
    assert torch.linalg.eigvalsh(naive).min() > -1e-10 * naive.norm()


def test_sigmoid_per_candidate_bias_and_infonce_scalar_bias_invariance():
    x, y = random_case(B=11, C=23, D=8, seed=2)
    bias = torch.linspace(-4.0, 2.0, 23, dtype=F64)
    fast = output_factor(x, y, 10.0, likelihood="sigmoid", logit_bias=bias, chunk_size=4)
    naive = output_factor_naive(x, y, 10.0, likelihood="sigmoid", logit_bias=bias)
    assert rel_err(fast, naive) < 1e-8
    # the bias really matters for the sigmoid likelihood ...
    assert rel_err(output_factor(x, y, 10.0, likelihood="sigmoid", logit_bias=-3.0), naive) > 1e-2
    # ... but a scalar bias cancels in the softmax
    a = output_factor(x, y, 10.0, likelihood="infonce")
    b = output_factor(x, y, 10.0, likelihood="infonce", logit_bias=7.0)
    assert rel_err(b, a) < 1e-12


def test_scaling_in_source_norm():
    # H ∝ 1/r² while the logits only see x̂ (method.md §2.1)
    x, y = random_case(B=9, C=20, D=8, seed=3)
    for likelihood, bias in CASES:
        h = output_factor(x, y, 20.0, likelihood=likelihood, logit_bias=bias)
        h3 = output_factor(3.0 * x, y, 20.0, likelihood=likelihood, logit_bias=bias)
        assert rel_err(h3, h / 9.0) < 1e-12


def test_fp32_inputs_agree_with_fp64_and_extreme_logits_are_finite():
    x, y = random_case(B=64, C=200, D=32, seed=4)
    for likelihood, bias in CASES:
        ref = output_factor_naive(x, y, 100.0, likelihood=likelihood, logit_bias=bias)
        fast32 = output_factor(x.float(), y.float(), 100.0, likelihood=likelihood, logit_bias=bias, chunk_size=16)
        assert fast32.dtype == F64
        assert rel_err(fast32, ref) < 1e-4
    # huge logits: no overflow / NaN from the softmax or σ(z)σ(−z)
    for likelihood, bias in [("infonce", None), ("sigmoid", -200.0), ("sigmoid", 200.0)]:
        h = output_factor(x.float(), y.float(), 5000.0, likelihood=likelihood, logit_bias=bias)
        assert torch.isfinite(h).all()


def test_stream_equals_one_call_and_input_validation():
    x, y = random_case(B=30, C=40, D=8, seed=5)
    stream = OutputFactorStream(y, 30.0, likelihood="infonce", chunk_size=7)
    for part in x.split([3, 15, 12]):
        stream.add(part)
    assert stream.num_sources == 30
    assert rel_err(stream.result(), output_factor(x, y, 30.0)) < 1e-12
    with pytest.raises(ValueError):
        output_factor(x, y[:, :5], 1.0)
    with pytest.raises(ValueError):
        output_factor(x, y, 1.0, likelihood="softmax")
    with pytest.raises(ValueError):
        output_factor(x, y, 1.0, likelihood="sigmoid", logit_bias=torch.zeros(3))


# ---------------------------------------------------------------------------------------------------
# autograd: Gauss-Newton J_fᵀ Λ J_f


def _logits_fn(y: torch.Tensor, tau: float, bias: float | None):
    yhat = y / y.norm(dim=1, keepdim=True)

    def f(x: torch.Tensor) -> torch.Tensor:  # x ↦ τ (x/‖x‖) Ŷᵀ (+ bias)
        z = tau * (x / x.norm()) @ yhat.T
        return z if bias is None else z + bias

    return f


def _loss_fn(likelihood: str, label: int, C: int):
    if likelihood == "infonce":
        return lambda z: F.cross_entropy(z[None], torch.tensor([label]))
    signs = -torch.ones(C, dtype=F64)
    signs[label] = 1.0  # SigLIP labels: +1 for the pair, −1 elsewhere
    return lambda z: -F.logsigmoid(signs * z).sum()


@pytest.mark.parametrize("likelihood,bias", CASES)
def test_matches_autograd_gauss_newton(likelihood, bias):
    x, y = random_case(B=3, C=6, D=4, seed=6)
    tau = 7.0
    f = _logits_fn(y, tau, bias)
    total = torch.zeros(4, 4, dtype=F64)
    for i in range(3):
        J = jacobian(f, x[i])  # [C, D]
        z = f(x[i]).detach()
        lam0 = hessian(_loss_fn(likelihood, 0, 6), z)  # [C, C]
        lam1 = hessian(_loss_fn(likelihood, 4, 6), z)
        torch.testing.assert_close(lam0, lam1, rtol=1e-12, atol=1e-14)  # Λ is label-free (§2.1)
        H = J.T @ lam0 @ J
        single = output_factor(x[i : i + 1], y, tau, likelihood=likelihood, logit_bias=bias)
        assert rel_err(single, H) < 1e-10
        total += H
    assert rel_err(output_factor(x, y, tau, likelihood=likelihood, logit_bias=bias, chunk_size=2), total) < 1e-10


@pytest.mark.parametrize("likelihood,bias", CASES)
def test_ggn_wrt_vec_w_is_kronecker_a_aT_otimes_H(likelihood, bias):
    """One sample through a tiny linear layer with bias, W̃ = [W b] ∈ R^{D×(p+1)}: the autograd GGN over
    column-stacked vec(W̃) equals (ã ãᵀ) ⊗ H; over torch's row-major flatten it is H ⊗ (ã ãᵀ)."""
    g = torch.Generator().manual_seed(7)
    p, D, C, tau = 3, 4, 5, 6.0
    a = torch.randn(p, generator=g, dtype=F64)
    w_full = torch.randn(D, p + 1, generator=g, dtype=F64)
    y = torch.randn(C, D, generator=g, dtype=F64)
    a_t = torch.cat([a, torch.ones(1, dtype=F64)])  # ã = [a; 1]
    f = _logits_fn(y, tau, bias)

    def z_of_w(w: torch.Tensor) -> torch.Tensor:
        return f(w @ a_t)

    J = jacobian(z_of_w, w_full)  # [C, D, p+1]
    lam = hessian(_loss_fn(likelihood, 2, C), z_of_w(w_full).detach())
    J_col = J.permute(0, 2, 1).reshape(C, -1)  # vec(W)[j·D + i] = W[i, j]  (column stacking)
    J_row = J.reshape(C, -1)  # W.flatten()[i·(p+1) + j] = W[i, j]
    ggn_col = J_col.T @ lam @ J_col
    ggn_row = J_row.T @ lam @ J_row

    H = output_factor((w_full @ a_t)[None], y, tau, likelihood=likelihood, logit_bias=bias)
    A = input_factor(a[None], bias=True)
    assert A.shape == (p + 1, p + 1)
    torch.testing.assert_close(A, torch.outer(a_t, a_t), rtol=0, atol=0)
    assert rel_err(torch.kron(A, H), ggn_col) < 1e-10
    assert rel_err(torch.kron(H, A), ggn_row) < 1e-10
    assert rel_err(torch.kron(H, A), ggn_col) > 1e-2  # the orientation is really tested


# ---------------------------------------------------------------------------------------------------
# input factor and accumulator


def test_input_factor():
    g = torch.Generator().manual_seed(8)
    a = torch.randn(10, 5, generator=g)
    A = input_factor(a, bias=False)
    assert A.dtype == F64 and A.shape == (5, 5)
    torch.testing.assert_close(A, sum(torch.outer(r, r) for r in a.double()), rtol=1e-12, atol=1e-12)
    Ab = input_factor(a, bias=True)
    assert Ab.shape == (6, 6)
    torch.testing.assert_close(Ab[:5, :5], A, rtol=0, atol=0)
    torch.testing.assert_close(Ab[5, :5], a.double().sum(0), rtol=1e-12, atol=1e-12)  # bias column last
    assert Ab[5, 5] == 10.0


def _class_batches(likelihood: str, seed: int = 9):
    """Three class batches of a layer with bias: (activations, sources, candidates)."""
    g = torch.Generator().manual_seed(seed)
    p, D = 6, 5
    W = torch.randn(D, p, generator=g, dtype=F64)
    b = torch.randn(D, generator=g, dtype=F64)
    out = []
    for size in (13, 8, 21):
        act = torch.randn(size, p, generator=g, dtype=F64)
        src = act @ W.T + b
        cand = torch.randn(size, D, generator=g, dtype=F64)  # the other modality of the same pairs
        out.append((act, src, cand))
    return p, D, out


@pytest.mark.parametrize("likelihood,bias", CASES)
def test_accumulator_over_class_batches_matches_naive(likelihood, bias):
    p, D, batches = _class_batches(likelihood)
    acc = KFACAccumulator(p, D, True, likelihood, chunk_size=5)
    A_ref = torch.zeros(p + 1, p + 1, dtype=F64)
    B_ref = torch.zeros(D, D, dtype=F64)
    for act, src, cand in batches:
        acc.update(act, src, cand, 12.0, bias)
        B_ref += output_factor_naive(src, cand, 12.0, likelihood=likelihood, logit_bias=bias)
        for a in act:
            a_t = torch.cat([a, torch.ones(1, dtype=F64)])
            A_ref += torch.outer(a_t, a_t)
    assert acc.num_samples == 42 and acc.num_class_batches == 3
    assert rel_err(acc.B_sum, B_ref) < 1e-8
    assert rel_err(acc.A_sum, A_ref) < 1e-12
    A, B, N = acc.factors()
    assert N == 42
    assert rel_err(A, A_ref / math.sqrt(42)) < 1e-12  # 1/√N convention (§2.2)
    assert rel_err(B, B_ref / math.sqrt(42)) < 1e-8
    # candidates change per class batch: one big candidate set would give a different B
    all_src = torch.cat([s for _, s, _ in batches])
    all_cand = torch.cat([c for _, _, c in batches])
    pooled = output_factor(all_src, all_cand, 12.0, likelihood=likelihood, logit_bias=bias)
    assert rel_err(pooled, B_ref) > 1e-3


def test_accumulator_state_dict_resume_merge_and_allreduce():
    p, D, batches = _class_batches("sigmoid", seed=10)
    kw = dict(dim_in=p, dim_out=D, bias=True, likelihood="sigmoid")

    full = KFACAccumulator(**kw)
    for batch in batches:
        full.update(*batch, 9.0, -2.0)

    # resume from a serialized checkpoint (plain tensors + primitives: weights_only loading works)
    first = KFACAccumulator(**kw)
    first.update(*batches[0], 9.0, -2.0)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = KFACAccumulator(**kw)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.num_samples == first.num_samples and torch.equal(resumed.B_sum, first.B_sum)
    for batch in batches[1:]:
        resumed.update(*batch, 9.0, -2.0)
    torch.testing.assert_close(resumed.A_sum, full.A_sum, rtol=1e-13, atol=0)
    torch.testing.assert_close(resumed.B_sum, full.B_sum, rtol=1e-13, atol=1e-13)
    assert (resumed.num_samples, resumed.num_class_batches) == (full.num_samples, full.num_class_batches)

    # two "processes" with disjoint class batches
    half_a, half_b = KFACAccumulator(**kw), KFACAccumulator(**kw)
    half_a.update(*batches[0], 9.0, -2.0)
    half_a.update(*batches[2], 9.0, -2.0)
    half_b.update(*batches[1], 9.0, -2.0)
    sa, sb = half_a.state_dict(), half_b.state_dict()
    merged = KFACAccumulator(**kw).merge(half_a).merge(half_b)
    reduced_state = dict(sa)
    for k in KFACAccumulator.SUM_KEYS:  # what a sum all-reduce would do
        reduced_state[k] = sa[k] + sb[k]
    reduced = KFACAccumulator(**kw)
    reduced.load_state_dict(reduced_state)
    for acc in (merged, reduced):
        for got, want in zip(acc.factors()[:2], full.factors()[:2], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
        assert acc.factors()[2] == full.factors()[2] == 42
    # state_dict returns copies
    sa["A_sum"].zero_()
    assert half_a.A_sum.abs().sum() > 0


def test_accumulator_rejects_mismatches():
    acc = KFACAccumulator(4, 3, False, "infonce")
    with pytest.raises(ValueError):
        acc.update(torch.randn(5, 4), torch.randn(6, 3), torch.randn(5, 3), 1.0)
    with pytest.raises(ValueError):
        acc.update(torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3), 1.0)
    with pytest.raises(ValueError):
        acc.merge(KFACAccumulator(4, 3, False, "sigmoid"))
    with pytest.raises(ValueError):
        acc.load_state_dict(KFACAccumulator(4, 3, True, "infonce").state_dict())
    with pytest.raises(RuntimeError):
        acc.factors()


# ---------------------------------------------------------------------------------------------------
# saturated softmax: exact to float64 round-off whatever the input dtype (docs/numerics.md)


def pairwise_oracle(sources: torch.Tensor, candidates: torch.Tensor, tau: float, likelihood: str,
                    bias: float | None) -> torch.Tensor:
    """Σ_i H_i in float64 from sums of PSD terms only, independent of the estimation code:
    InfoNCE ``Λ = Σ_{c<c'} p_c p_c' (e_c − e_c')(e_c − e_c')ᵀ``, so ``H = Σ_{c<c'} p_c p_c' d d ᵀ`` with
    ``d = (τ/r) P (ŷ_c − ŷ_c')``; sigmoid ``H = Σ_c w_c (τ/r)² (P ŷ_c)(P ŷ_c)ᵀ``. Nothing cancels."""
    yhat = candidates.double() / candidates.double().norm(dim=1, keepdim=True)
    C, D = yhat.shape
    iu = torch.triu_indices(C, C, 1)
    total = torch.zeros(D, D, dtype=F64)
    for x in sources.double():
        r = x.norm()
        xhat = x / r
        z = tau * (yhat @ xhat) + (0.0 if bias is None else bias)
        if likelihood == "infonce":
            p = torch.log_softmax(z, 0).exp()
            d = yhat[iu[0]] - yhat[iu[1]]
            w = p[iu[0]] * p[iu[1]]
        else:
            d = yhat
            w = torch.sigmoid(z) * torch.sigmoid(-z)
        d = (tau / r) * (d - torch.outer(d @ xhat, xhat))  # (τ/r) P d
        total += d.T @ (w[:, None] * d)
    return total


def saturated_pairs(sigma: float, n: int = 32, D: int = 32, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, D] and their captions = images + σ·noise (float64); small σ saturates the softmax."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, D, generator=g, dtype=F64)
    return img, img + sigma * torch.randn(n, D, generator=g, dtype=F64)


@pytest.mark.parametrize("likelihood,bias", [("infonce", None), ("sigmoid", -10.0)])
@pytest.mark.parametrize("sigma", [2.0, 1.2, 0.8, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("moment_dtype", [None, torch.float32])
def test_saturated_softmax_exact_and_psd(likelihood, bias, sigma, dtype, moment_dtype):
    """τ = 100 and captions close to their images: 1 − p_k down to ~1e-20 and B down to ~1e-17 of its
    unsaturated size. The fast path and the naive path stay within 1e-6 (in fact ~1e-14; ~1e-7 with the
    fit's float32 probability-weighted moments) of an independent pairwise oracle on the same (possibly
    float32) inputs, and B stays PSD; the former ``T1 − T2 − T2ᵀ + T3 − T4`` form lost all accuracy here
    (docs/numerics.md)."""
    img, cap = saturated_pairs(sigma)
    x, y = img.to(dtype), cap.to(dtype)
    tau = 100.0
    ref = pairwise_oracle(x, y, tau, likelihood, bias)
    if likelihood == "infonce" and sigma <= 0.8:  # the regime is really saturated
        p = torch.softmax(tau * F.normalize(x.double(), dim=1) @ F.normalize(y.double(), dim=1).T, dim=1)
        off_pivot = p.scatter(1, p.argmax(1, keepdim=True), 0.0).sum(1)  # 1 − p_k, without cancellation
        assert float(off_pivot.max()) < 1e-9
    naive = output_factor_naive(x, y, tau, likelihood=likelihood, logit_bias=bias)
    assert rel_err(naive, ref) < 1e-12
    fast = output_factor(x, y, tau, likelihood=likelihood, logit_bias=bias, chunk_size=20, moment_dtype=moment_dtype)
    assert fast.dtype == F64
    assert rel_err(fast, ref) < 1e-6, rel_err(fast, ref)
    eig = torch.linalg.eigvalsh(fast)
    assert float(eig.min()) >= -1e-10 * float(eig.max()), (float(eig.min()), float(eig.max()))


def test_compute_dtype_float32_is_an_explicit_choice():
    x, y = saturated_pairs(1.2)
    ref = output_factor(x, y, 100.0)
    # float32 logits carry τ·(float32 round-off) ≈ 1e-5 into the probabilities: close, not exact
    err32 = rel_err(output_factor(x.float(), y.float(), 100.0, compute_dtype=torch.float32), ref)
    assert 1e-9 < err32 < 1e-3
    with pytest.raises(ValueError, match="compute_dtype"):
        output_factor(x, y, 100.0, compute_dtype=torch.float16)
