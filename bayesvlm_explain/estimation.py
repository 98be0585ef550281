"""KFAC curvature factors of a contrastive projection layer (method.md §2 and §7).

Convention (fixed project-wide, method.md §1/§2.2): a projection ``x = W ã`` with ``W ∈ R^{D×p}``
(``ã = [a; 1]`` when the layer has a bias, the constant 1 appended *last*) gets the Laplace/GGN posterior
``vec(W) ~ N(vec W*, Ã⁻¹ ⊗ B̃⁻¹)``. Here ``vec`` is the *column-stacking* vec (Fortran order,
``vec(W) = W.T.flatten()`` in torch), so that the per-sample GGN is ``(ã ãᵀ) ⊗ H`` with the p×p input
factor on the left. (Torch's row-major ``W.flatten()`` would give ``H ⊗ (ã ãᵀ)`` instead; the tests check
both orderings against autograd.)

Per source sample with un-normalised embedding ``x`` (method.md §2.1)::

    z   = τ Ŷ x̂ (+ bias)                 logits against C normalised candidates Ŷ [C, D]
    J_x = (τ / r) Ŷ P,   r = ‖x‖,  P = I − x̂ x̂ᵀ
    H   = J_xᵀ Λ J_x                      D×D,  Λ = ∂²loss/∂z²
    InfoNCE: Λ = diag(p) − p pᵀ,   p = softmax(z)
    sigmoid: Λ = diag(σ(z) σ(−z))           (SigLIP; the ±1 labels drop out)

The stored factors follow the reference convention (method.md §2.2)::

    A_stored = Σ_i ã_i ã_iᵀ / √N       B_stored = Σ_i H_i / √N       (N = number of source rows)

:func:`output_factor` computes ``Σ_i H_i`` with the O(BCD + BD² + CD²) rewrite of method.md §7.2.
:func:`output_factor_naive` is the per-sample D×D reference path, for tests and benchmarks only.
:class:`KFACAccumulator` streams class batches into raw float64 sums that can be checkpointed, merged
and all-reduced.

``logit_scale`` everywhere is the multiplier ``τ = exp(raw logit_scale parameter)`` (≈100 for CLIP,
≈110 for SigLIP), i.e. what open_clip's forward returns, *not* the log-parameter itself. ``logit_bias``
is SigLIP's additive bias (≈ −10), or ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .options import CHOICES, Likelihood

LIKELIHOODS: tuple[str, ...] = CHOICES["likelihood"]

DEFAULT_CHUNK_SIZE = 512
"""Source rows per chunk. Peak memory of :func:`output_factor` is ≈ 3–4 [chunk, C] compute-dtype arrays
plus the normalised candidates [C, D] and a few D×D float64 buffers."""

_T1_BLOCK = 4096  # candidate rows per block when forming T1 = Ŷᵀ diag(ω) Ŷ

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "KFACAccumulator",
    "LIKELIHOODS",
    "OutputFactorStream",
    "input_factor",
    "output_factor",
    "output_factor_naive",
]


# --------------------------------------------------------------------------------------------------
# helpers


def _check_likelihood(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def _compute_dtype(compute_dtype: torch.dtype | None, name: str = "compute_dtype") -> torch.dtype:
    """The dtype of the O(bCD) work: float64 unless float32 is asked for (see ``docs/numerics.md``)."""
    if compute_dtype is None:
        return torch.float64
    if compute_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be torch.float32 or torch.float64, got {compute_dtype}")
    return compute_dtype


def _as_float(x: float | torch.Tensor) -> float:
    return float(x.detach().item()) if isinstance(x, torch.Tensor) else float(x)


def _bias_tensor(
    logit_bias: float | torch.Tensor | None, num_candidates: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """Scalar or per-candidate [C] bias, added to the logits."""
    if logit_bias is None:
        return None
    b = torch.as_tensor(logit_bias, device=device, dtype=dtype)
    if b.ndim > 1 or (b.ndim == 1 and b.shape[0] != num_candidates):
        raise ValueError(f"logit_bias must be a scalar or a [C={num_candidates}] vector, got {tuple(b.shape)}")
    return b


def _logit_hessian_weights(z: torch.Tensor, likelihood: str) -> torch.Tensor:
    """π [b, C]: softmax probabilities p (InfoNCE) or σ(z)σ(−z) (sigmoid), computed stably (§7.2).
    ``z`` may be overwritten."""
    if likelihood == "infonce":
        return torch.log_softmax(z, dim=-1).exp_()
    # σ(z)·σ(−z) with both factors evaluated directly (torch.sigmoid is overflow-safe): no 1 − σ(z)
    # cancellation, so tiny weights keep their relative accuracy. Consumes z (overwritten in place).
    w = torch.sigmoid(z)
    return w.mul_(z.neg_().sigmoid_())


def _symmetrize(m: torch.Tensor) -> torch.Tensor:
    return 0.5 * (m + m.T)


def _check_pair(sources: torch.Tensor, candidates: torch.Tensor) -> None:
    if sources.ndim != 2 or candidates.ndim != 2:
        raise ValueError(
            f"sources [B, D] and candidates [C, D] must be 2-D, got {tuple(sources.shape)} and "
            f"{tuple(candidates.shape)}"
        )
    if sources.shape[1] != candidates.shape[1]:
        raise ValueError(f"embedding dims differ: sources D={sources.shape[1]}, candidates D={candidates.shape[1]}")


# --------------------------------------------------------------------------------------------------
# fast output factor (method.md §7.2, in a cancellation-free form)


class OutputFactorStream:
    """Σ_i H_i over many source chunks that share one candidate set (method.md §7.2, amortised).

    Cancellation-free form (``docs/numerics.md``). For InfoNCE, ``Λ 1 = 0`` lets every row of
    ``J = (τ/r) Ŷ P`` be measured from the row of the most probable candidate k (the pivot):
    ``e_c = ŷ_c − ŷ_k``, ``H = (τ²/r²) P (N − u uᵀ) P`` with ``N = Σ_{c≠k} p_c e_c e_cᵀ`` and
    ``u = Σ_{c≠k} p_c e_c``. Only the off-pivot probabilities enter (``p_k`` never does), ``uuᵀ ⪯ (1 − p_k) N``,
    so when the softmax saturates (``1 − p_k → 0``) every term shrinks with the result instead of two
    O(1) terms cancelling to it (the old ``T1 − T4``). For the sigmoid, Λ = diag(w) is already a sum of
    PSD terms with positive weights. In both cases the projection P is expanded as in §7.2 (it cancels
    at most a factor ≈ 1/(1 − cos²) of the dominant candidates, ≤ 2 in the saturated regime).

    Running float64 sums over sources (weights 1/r_i²): ω [C] (``T1 = Ŷᵀ diag(ω) Ŷ`` once, in
    :meth:`result`) and one D×D matrix ``R`` whose symmetric part is
    ``− Σ (ŷ_k a_iᵀ + a_i ŷ_kᵀ) + Σ s_i ŷ_k ŷ_kᵀ − Σ (x̂ (N x̂)ᵀ + (N x̂) x̂ᵀ) + Σ (x̂ᵀN x̂) x̂ x̂ᵀ − Σ (P u)(P u)ᵀ``
    with ``a_i = Σ_{c≠k} p_c ŷ_c`` and ``s_i = Σ_{c≠k} p_c = 1 − p_k`` (no cancellation), accumulated
    as one stacked GEMM ``Σ L_iᵀ M_i`` per chunk; ``Σ H = τ² sym(T1 + R)``. The sigmoid uses the same
    sums with the origin as pivot (``e_c = ŷ_c``: no ŷ_k terms, no ``(P u)(P u)ᵀ``).

    Cost per chunk of b sources: O(bCD) (three GEMMs) + O(bD²); once: O(CD²).
    Memory: O(chunk·C + CD + D²); never a [B, C, D] tensor nor a per-sample D×D matrix.

    Args:
        candidates: [C, D] embeddings of the other modality (normalised here).
        logit_scale: τ (the multiplier, not its log).
        likelihood: ``"infonce"`` (CLIP) or ``"sigmoid"`` (SigLIP).
        logit_bias: scalar or [C] bias added to the logits (SigLIP), or None.
        chunk_size: source rows per chunk in :meth:`add`.
        compute_dtype: dtype of the [b, C] arrays (logits, probabilities), of the logit GEMM
            ``X̂ Ŷᵀ`` and of T1; default float64 whatever the input dtype (exact to float64 round-off).
            ``torch.float32`` is ≈ 1.5× faster but carries τ·(float32 round-off) into the logits
            (measured errors in ``docs/numerics.md``). Every sum over sources and every D×D term is
            float64 in both cases.
        moment_dtype: dtype of the two probability-weighted GEMMs over the candidates,
            ``Σ_c π'_c ŷ_c`` and ``Σ_c π'_c δ_c ŷ_c`` (two of the three O(bCD) products); default: the
            compute dtype. ``torch.float32`` with float64 logits (the fit's choice, ``docs/fitting.md``)
            stays within ≈ 2e-7 of the float64 result even when the softmax saturates: the weights are
            float64-exact probabilities, non-negative, and enter B without further cancellation, so
            float32 costs only its own round-off, not τ times it.
    """

    def __init__(
        self,
        candidates: torch.Tensor,
        logit_scale: float | torch.Tensor,
        *,
        likelihood: Likelihood = "infonce",
        logit_bias: float | torch.Tensor | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compute_dtype: torch.dtype | None = None,
        moment_dtype: torch.dtype | None = None,
    ) -> None:
        _check_likelihood(likelihood)
        if candidates.ndim != 2:
            raise ValueError(f"candidates must be [C, D], got {tuple(candidates.shape)}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.likelihood = likelihood
        self.tau = _as_float(logit_scale)
        self.chunk_size = int(chunk_size)
        self.dtype = _compute_dtype(compute_dtype)
        self.yhat64 = F.normalize(candidates.detach().to(torch.float64), dim=-1)  # Ŷ [C, D]
        self.device = self.yhat64.device
        self.yhat = self.yhat64.to(self.dtype)  # Ŷ in the compute dtype (the same tensor for float64)
        self.moment_dtype = _compute_dtype(moment_dtype or self.dtype, "moment_dtype")
        # The probability-weighted GEMMs run on the candidates centred at their mean m (float64), and m is
        # added back in float64: Σ π'_c ŷ_c = Σ π'_c (ŷ_c − m) + s m. Exact in exact arithmetic; in float32
        # the round-off then scales with the candidates' spread, not their length, which matters when they
        # cluster (P = I − x̂x̂ᵀ and the pivot then cancel most of ŷ_c).
        self.center = self.yhat64.mean(0)  # m [D]
        self.yhat_m = (self.yhat64 - self.center).to(self.moment_dtype)  # Ŷ − 1mᵀ [C, D]
        C, D = self.yhat.shape
        self.bias = _bias_tensor(logit_bias, C, self.device, self.dtype)
        f64: dict[str, Any] = {"device": self.device, "dtype": torch.float64}
        self.omega = torch.zeros(C, **f64)  # ω = Σ_i π'_i / r_i²  (π' = off-pivot weights)
        self.rest = torch.zeros(D, D, **f64)  # R: every source-side term, symmetrised in result()
        self.num_sources = 0

    def add(self, sources: torch.Tensor) -> None:
        """Accumulate the sources [b, D] (un-normalised embeddings), chunk by chunk."""
        _check_pair(sources, self.yhat)
        sources = sources.detach()
        for start in range(0, sources.shape[0], self.chunk_size):
            self._add_chunk(sources[start : start + self.chunk_size].to(self.device))
        self.num_sources += int(sources.shape[0])

    @torch.no_grad()
    def _add_chunk(self, x_in: torch.Tensor) -> None:
        # The O(bCD) products and the [b, C] arrays use the compute dtype; everything O(bD) / O(bD²)
        # and every sum over sources is float64.
        x64 = x_in.to(torch.float64)
        r64 = x64.norm(dim=1)  # r_i
        inv_r2 = r64.pow(-2)  # 1 / r_i²  [b]
        xhat64 = x64 / r64[:, None]  # X̂ [b, D]

        cos = xhat64.to(self.dtype) @ self.yhat.T  # cos_ic = ŷ_cᵀ x̂_i  [b, C]
        z = cos * self.tau
        if self.bias is not None:
            z += self.bias
        infonce = self.likelihood == "infonce"
        if infonce:
            k = z.argmax(dim=1)  # pivot: the most probable candidate of each source
            pi = _logit_hessian_weights(z, self.likelihood).scatter_(1, k[:, None], 0.0)  # π' = p, 0 at k
            delta = cos.sub_(cos.gather(1, k[:, None]))  # δ_ic = x̂_iᵀ e_ic = cos_ic − cos_ik
        else:
            pi = _logit_hessian_weights(z, self.likelihood)  # w (sigmoid): no pivot, e_c = ŷ_c
            delta = cos
        del z

        self.omega += (pi.T @ inv_r2.to(self.dtype)).to(torch.float64)  # ω += Σ_i π'_i / r_i²
        pd = pi * delta  # π' ⊙ δ
        t = pd.sum(1, dtype=torch.float64)  # t_i = Σ_c π'_ic δ_ic = x̂_iᵀ u_i
        nx = self._weighted(pd, t)  # Σ_c π'_c δ_c ŷ_c  [b, D]
        q = pd.mul_(delta).sum(1, dtype=torch.float64)  # q_i = Σ_c π'_ic δ_ic² = x̂_iᵀ N_i x̂_i
        del pd, delta, cos
        # sym(x̂ (q x̂ − 2 N x̂)ᵀ) / r² = (x̂ᵀN x̂) x̂ x̂ᵀ − x̂ (N x̂)ᵀ − (N x̂) x̂ᵀ, all over r²
        left, right = [xhat64], [(q[:, None] * xhat64).sub_(nx, alpha=2.0).mul_(inv_r2[:, None])]
        if infonce:
            yk = self.yhat64[k]  # ŷ_{k_i}  [b, D]
            s = pi.sum(1, dtype=torch.float64)  # s_i = Σ_{c≠k} p_c = 1 − p_k
            a = self._weighted(pi, s)  # a_i = Σ_{c≠k} p_c ŷ_c
            right[0].add_(yk * (2.0 * t * inv_r2)[:, None])  # N_i x̂_i = Σ_c π'_c δ_c e_c = nx − t ŷ_k
            g = (a - s[:, None] * yk - t[:, None] * xhat64) * r64.reciprocal()[:, None]  # P_i u_i / r_i
            left += [yk, g]  # sym(ŷ_k (s ŷ_k − 2a)ᵀ) / r² − g gᵀ
            right += [(s[:, None] * yk).sub_(a, alpha=2.0).mul_(inv_r2[:, None]), -g]
        self.rest += torch.cat(left).T @ torch.cat(right)  # one [D, 3b] × [3b, D] GEMM (b for sigmoid)

    def _weighted(self, weights: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """``Σ_c weights_ic ŷ_c`` [b, D] float64, given ``total_i = Σ_c weights_ic``: the GEMM on the centred
        candidates in ``moment_dtype``, the centre added back in float64."""
        centred = weights.to(self.moment_dtype) @ self.yhat_m
        return torch.addr(centred.to(torch.float64), total, self.center)

    @torch.no_grad()
    def result(self) -> torch.Tensor:
        """Σ_i H_i [D, D], float64, symmetrised (class docstring; method.md §7.2)."""
        D = self.yhat.shape[1]
        t1 = torch.zeros(D, D, device=self.device, dtype=torch.float64)
        # T1 = Ŷᵀ diag(ω) Ŷ, once per candidate set: compute-dtype GEMM per block, float64 sum of blocks
        for start in range(0, self.yhat.shape[0], _T1_BLOCK):
            y = self.yhat[start : start + _T1_BLOCK]
            w = self.omega[start : start + _T1_BLOCK].to(self.dtype)
            t1 += ((y * w[:, None]).T @ y).to(torch.float64)
        return _symmetrize((t1 + self.rest) * self.tau**2)


def output_factor(
    sources: torch.Tensor,
    candidates: torch.Tensor,
    logit_scale: float | torch.Tensor,
    *,
    likelihood: Likelihood = "infonce",
    logit_bias: float | torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compute_dtype: torch.dtype | None = None,
    moment_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``Σ_i H_i`` [D, D] (float64) for un-normalised sources [B, D] against candidates [C, D].

    ``H_i = J_xᵀ Λ J_x`` of method.md §2.1, computed with the rewrite of §7.2 in its cancellation-free
    form (T1 once per candidate set, the other sums per source chunk; :class:`OutputFactorStream`),
    float64 by default whatever the input dtype, stable log-softmax / log-sigmoid, symmetrised.
    ``logit_scale`` is τ (not log τ); ``logit_bias`` is a scalar or [C] vector or None. Λ does not
    depend on the labels for either likelihood (§2.1), so none are needed. ``compute_dtype`` and
    ``moment_dtype``: see :class:`OutputFactorStream`.
    Cost O(BCD + BD² + CD²); memory O(chunk·C + CD + D²).
    """
    _check_pair(sources, candidates)
    stream = OutputFactorStream(
        candidates,
        logit_scale,
        likelihood=likelihood,
        logit_bias=logit_bias,
        chunk_size=chunk_size,
        compute_dtype=compute_dtype,
        moment_dtype=moment_dtype,
    )
    stream.add(sources)
    return stream.result()


@torch.no_grad()
def output_factor_naive(
    sources: torch.Tensor,
    candidates: torch.Tensor,
    logit_scale: float | torch.Tensor,
    *,
    likelihood: Likelihood = "infonce",
    logit_bias: float | torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """REFERENCE PATH (tests and benchmarks only): ``Σ_i H_i`` with one explicit D×D Hessian per sample.

    For each source: ``J = (τ/r) Ŷ P`` [C, D] with ``P = I − x̂x̂ᵀ`` (applied in O(CD)) and
    ``H = Jᵀ Λ J`` formed directly (method.md §2.1) as a sum of PSD terms: ``Jᵀ diag(w) J`` for the
    sigmoid, and for InfoNCE the centred form ``Σ_c p_c (j_c − j̄)(j_c − j̄)ᵀ`` with
    ``j̄ = Jᵀp = j_k + Σ_c p_c (j_c − j_k)`` measured from the most probable row k, so that nothing
    cancels when the softmax saturates. Cost O(B·C·D²), memory O(CD + D²). Same dtypes and return
    convention as :func:`output_factor` (float64 sum, symmetrised).
    """
    _check_likelihood(likelihood)
    _check_pair(sources, candidates)
    dtype = _compute_dtype(compute_dtype)
    tau = _as_float(logit_scale)
    yhat = F.normalize(candidates.detach().to(torch.float64), dim=-1).to(dtype)
    C, D = yhat.shape
    bias = _bias_tensor(logit_bias, C, yhat.device, dtype)
    total = torch.zeros(D, D, device=yhat.device, dtype=torch.float64)
    for x in sources.detach().to(yhat.device, torch.float64):
        r = x.norm()
        xhat = (x / r).to(dtype)
        cos = yhat @ xhat  # [C]
        jac = (tau / r.item()) * (yhat - torch.outer(cos, xhat))  # J_x = (τ/r) Ŷ P, P = I − x̂x̂ᵀ  [C, D]
        z = tau * cos
        if bias is not None:
            z = z + bias
        w = _logit_hessian_weights(z[None], likelihood)[0]
        if likelihood == "infonce":
            dev = jac - jac[int(z.argmax())]  # j_c − j_k
            jac = dev - w @ dev  # j_c − j̄
        total += (jac.T @ (w[:, None] * jac)).to(torch.float64)  # Σ_c w_c j_c j_cᵀ
    return _symmetrize(total)


# --------------------------------------------------------------------------------------------------
# input factor


@torch.no_grad()
def input_factor(activations: torch.Tensor, *, bias: bool) -> torch.Tensor:
    """``Σ_i ã_i ã_iᵀ`` [p(+1), p(+1)] in float64 for activations [N, p]; ``ã = [a; 1]`` if ``bias``."""
    if activations.ndim != 2:
        raise ValueError(f"activations must be [N, p], got {tuple(activations.shape)}")
    a = activations.detach().to(torch.float64)
    if bias:
        a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
    return a.T @ a


# --------------------------------------------------------------------------------------------------
# streaming accumulator


class KFACAccumulator:
    """Streaming KFAC sums for one tower: ``A_sum = Σ ã ãᵀ``, ``B_sum = Σ H`` (float64) and the count N.

    One :meth:`update` is one "class batch" (method.md §2.3): the sources of a batch of pairs, scored
    against the other modality's embeddings of the *same* batch as the candidate set (the reference
    uses 32,768 pairs per class batch). ``A_sum`` and ``B_sum`` use exactly the same rows.

    Difference from the reference (method.md §2.2, bug B15): the reference sums A over all 32,768 rows
    of a class batch but B over only ⌊32768/5⌋·5 = 32,765 rows (its last partial data batch of 5 is
    dropped), and divides both by √327,680. Here every source row enters both sums and N counts them.

    State: :meth:`state_dict` holds the raw sums and counts as plain tensors (keys in
    :attr:`SUM_KEYS`) plus metadata; partial states of several processes can be combined by a sum
    all-reduce of the ``SUM_KEYS`` tensors, or with :meth:`merge`, provided they saw disjoint class
    batches. :meth:`factors` applies the 1/√N convention.

    Args:
        dim_in: p, the layer's input width (without the bias column).
        dim_out: D, the embedding dim.
        bias: whether the layer has a bias (a constant-1 input column is appended last).
        likelihood: ``"infonce"`` or ``"sigmoid"``.
        chunk_size, compute_dtype, moment_dtype: passed to :class:`OutputFactorStream`.
        device: where the float64 sums live (default CPU).
    """

    SUM_KEYS: tuple[str, ...] = ("A_sum", "B_sum", "num_samples", "num_class_batches")
    STATE_VERSION = 1

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        bias: bool = False,
        likelihood: Likelihood = "infonce",
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compute_dtype: torch.dtype | None = None,
        moment_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        _check_likelihood(likelihood)
        self.dim_in = int(dim_in)
        self.dim_out = int(dim_out)
        self.bias = bool(bias)
        self.likelihood = likelihood
        self.chunk_size = int(chunk_size)
        self.compute_dtype = compute_dtype
        self.moment_dtype = moment_dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        p = self.dim_in + int(self.bias)
        self.A_sum = torch.zeros(p, p, dtype=torch.float64, device=self.device)
        self.B_sum = torch.zeros(self.dim_out, self.dim_out, dtype=torch.float64, device=self.device)
        self.num_samples = 0
        self.num_class_batches = 0

    @property
    def factor_dim_in(self) -> int:
        """Size of A: p, or p + 1 with a bias."""
        return self.dim_in + int(self.bias)

    def update(
        self,
        activations: torch.Tensor,
        source_embeddings: torch.Tensor,
        candidate_embeddings: torch.Tensor,
        logit_scale: float | torch.Tensor,
        logit_bias: float | torch.Tensor | None = None,
    ) -> None:
        """Add one class batch.

        Args:
            activations: [b, p] inputs of the Bayesian layer (without the constant 1).
            source_embeddings: [b, D] the layer's un-normalised outputs for the same rows (including any
                deterministic residual, method.md §1).
            candidate_embeddings: [C, D] the other modality's embeddings (normalised inside).
            logit_scale: τ (not log τ).  logit_bias: SigLIP bias or None.
        """
        if activations.ndim != 2 or activations.shape[1] != self.dim_in:
            raise ValueError(f"activations must be [b, {self.dim_in}], got {tuple(activations.shape)}")
        if source_embeddings.ndim != 2 or source_embeddings.shape != (activations.shape[0], self.dim_out):
            raise ValueError(
                f"source_embeddings must be [{activations.shape[0]}, {self.dim_out}], "
                f"got {tuple(source_embeddings.shape)}"
            )
        if candidate_embeddings.ndim != 2 or candidate_embeddings.shape[1] != self.dim_out:
            raise ValueError(
                f"candidate_embeddings must be [C, {self.dim_out}], got {tuple(candidate_embeddings.shape)}"
            )
        b_part = output_factor(
            source_embeddings,
            candidate_embeddings,
            logit_scale,
            likelihood=self.likelihood,
            logit_bias=logit_bias,
            chunk_size=self.chunk_size,
            compute_dtype=self.compute_dtype,
            moment_dtype=self.moment_dtype,
        )
        a_part = input_factor(activations, bias=self.bias)
        self.A_sum += a_part.to(self.device)
        self.B_sum += b_part.to(self.device)
        self.num_samples += int(activations.shape[0])
        self.num_class_batches += 1

    def merge(self, other: KFACAccumulator) -> KFACAccumulator:
        """Add another accumulator's sums (disjoint class batches) into this one; returns ``self``."""
        self._check_meta(other.dim_in, other.dim_out, other.bias, other.likelihood)
        self.A_sum += other.A_sum.to(self.device)
        self.B_sum += other.B_sum.to(self.device)
        self.num_samples += other.num_samples
        self.num_class_batches += other.num_class_batches
        return self

    def state_dict(self) -> dict[str, Any]:
        """Raw sums and counts (tensors, additive across processes) plus metadata (plain Python)."""
        return {
            "A_sum": self.A_sum.clone(),
            "B_sum": self.B_sum.clone(),
            "num_samples": torch.tensor(self.num_samples, dtype=torch.int64),
            "num_class_batches": torch.tensor(self.num_class_batches, dtype=torch.int64),
            "dim_in": self.dim_in,
            "dim_out": self.dim_out,
            "bias": self.bias,
            "likelihood": self.likelihood,
            "version": self.STATE_VERSION,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (e.g. to resume, or after a sum all-reduce of ``SUM_KEYS``)."""
        missing = [k for k in (*self.SUM_KEYS, "dim_in", "dim_out", "bias", "likelihood") if k not in state]
        if missing:
            raise KeyError(f"state_dict lacks {missing}")
        if int(state.get("version", self.STATE_VERSION)) != self.STATE_VERSION:
            raise ValueError(f"unsupported state version {state['version']}")
        self._check_meta(int(state["dim_in"]), int(state["dim_out"]), bool(state["bias"]), str(state["likelihood"]))
        a = torch.as_tensor(state["A_sum"])
        b = torch.as_tensor(state["B_sum"])
        if a.shape != self.A_sum.shape or b.shape != self.B_sum.shape:
            raise ValueError(f"sum shapes {tuple(a.shape)}, {tuple(b.shape)} do not match this accumulator")
        self.A_sum = a.to(self.device, torch.float64).clone()
        self.B_sum = b.to(self.device, torch.float64).clone()
        self.num_samples = int(state["num_samples"])
        self.num_class_batches = int(state["num_class_batches"])

    def factors(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(A_stored, B_stored, N)`` with ``A_stored = A_sum/√N`` [p(+1), p(+1)], ``B_stored = B_sum/√N``
        [D, D] (method.md §2.2), symmetrised, and N the number of source rows."""
        if self.num_samples == 0:
            raise RuntimeError("no data accumulated")
        scale = 1.0 / math.sqrt(self.num_samples)
        a = _symmetrize(self.A_sum) * scale
        b = _symmetrize(self.B_sum) * scale
        return a.to(dtype), b.to(dtype), self.num_samples

    def _check_meta(self, dim_in: int, dim_out: int, bias: bool, likelihood: str) -> None:
        mine = (self.dim_in, self.dim_out, self.bias, self.likelihood)
        theirs = (dim_in, dim_out, bias, likelihood)
        if mine != theirs:
            raise ValueError(f"incompatible accumulator (dim_in, dim_out, bias, likelihood): {theirs} vs {mine}")

    def __repr__(self) -> str:
        return (
            f"KFACAccumulator(dim_in={self.dim_in}, dim_out={self.dim_out}, bias={self.bias}, "
            f"likelihood={self.likelihood!r}, num_samples={self.num_samples}, "
            f"num_class_batches={self.num_class_batches})"
        )
