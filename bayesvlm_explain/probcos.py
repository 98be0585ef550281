"""Moments of the probabilistic cosine similarity under Kronecker posteriors (method.md §3).

For image ``n`` with embedding ``u_n ~ N(μ_n, s_n Σ_i)`` and prompts with embeddings ``v_c`` that share
the text projection, ``Cov(v_c, v_c') = T_cc' Σ_t``, the inner product ``z_nc = u_nᵀ v_c`` has the exact
moments (method.md §3.2–3.3)

    E z_nc             = μ_nᵀ μ_c
    Cov(z_nc, z_nc')   = s_n μ_cᵀ Σ_i μ_c'  +  T_cc' μ_nᵀ Σ_t μ_n  +  s_n T_cc' tr(Σ_i Σ_t)
                         └── image part ──┘    └─── text part ───┘    └──── interaction ────┘

with ``Σ_i = B̃_img⁻¹``, ``Σ_t = B̃_txt⁻¹``, ``s_n = f̃_nᵀ Ã_img⁻¹ f̃_n`` and ``T = G̃ Ã_txt⁻¹ G̃ᵀ``. The logit
is ``τ`` times the inner product normalised by the expected norms ``E||u||² = ||μ||² + s tr(Σ_i)`` (the
paper's ProbCosine), plus the logit bias. Three variance modes (``VARIANCES``):

* ``"expected_norm"`` (alias ``"exact"``): the exact moments above of that normalised inner product. The
  three parts are exact *for the scaled inner product*; the true cosine's variance is smaller when the
  posterior is tight, because a perturbation along an embedding's own direction leaves a cosine unchanged.
* ``"projected"``: the same, with the other side's mean projected by ``Q_u = I − ρ_u ûûᵀ`` in the image
  part (``ρ_u = ||μ_u||² / E||u||²``) and by ``Q_v = I − ρ_v v̂v̂ᵀ`` in the text part. For tight posteriors
  (``ρ → 1``) it is the delta-method variance of the true cosine; for broad ones (``ρ → 0``) the
  expected-norm variance. Same O(N D² + C D² + N C D) cost; each image's class covariance is then
  its own C×C matrix (formed from O(N C) vectors and fixed C×C matrices, only when asked).
* ``"diagonal"``: expected-norm with only the diagonals of ``Σ_i``, ``Σ_t`` (the reference's formula).

Nothing here forms a per-(image, prompt) D×D product. Memory follows what is asked (docs/scale.md): the
means and variances cost O(N C + C (D + p_t) + D² + p_t²) and never form a C×C matrix; the class
covariance (:meth:`CosineMoments.covariance`) and the Monte Carlo draws, which need C×C numbers per image,
are built in image chunks sized to a ``max_memory`` budget (:data:`DEFAULT_MAX_MEMORY`), and a request that
cannot fit is refused with a :class:`MemoryBudgetError` before anything large is allocated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property

import torch

from .numerics import psd_root, symmetrize
from .options import check_option, variance_mode

_JITTERS = (0.0, 1e-12, 1e-10, 1e-8, 1e-6)
DEFAULT_MAX_MEMORY = 2 * 1024**3
"""Default budget (bytes) for the C×C-per-image work: the class covariance and the MC draws' roots."""
COV_WORK = 6
"""C×C temporaries per image while one image's class covariance is assembled (measured upper bound)."""
ROOT_WORK = 5
"""C×C matrices per image while its Cholesky root is made (covariance, jittered copy, root, temporaries)."""


class MemoryBudgetError(MemoryError):
    """A request whose C×C-per-image work cannot fit the ``max_memory`` budget (estimated before allocating)."""


def _budget_error(what: str, n: int, c: int, needed: int, budget: int) -> MemoryBudgetError:
    return MemoryBudgetError(
        f"{what} for N={n} images x C={c} prompts needs about {needed / 2**30:.2f} GiB "
        f"({needed:,} bytes) but max_memory is {budget / 2**30:.2f} GiB ({budget:,} bytes); "
        "use fewer prompts or images, the per-class variances (pred.var, probit), or raise max_memory")


def image_chunk(what: str, n: int, c: int, itemsize: int, fixed: int, per_image: int, budget: int) -> int:
    """Images per chunk so that ``fixed + chunk·per_image`` C×C matrices fit ``budget`` bytes.

    Raises :class:`MemoryBudgetError` (naming N, C and the bytes needed for one image) when even one
    image does not fit; nothing is allocated here.
    """
    mat = c * c * itemsize
    needed = (fixed + per_image) * mat
    if needed > budget:
        raise _budget_error(what, n, c, needed, budget)
    return max(1, min(n, (budget - fixed * mat) // (per_image * mat)))


@dataclass
class ProjectionTerms:
    """Per-image and per-pair vectors of the ``"projected"`` variance (see :func:`cosine_moments`).

    Image side (``Q_n μ_c`` in ``Σ_i``): ``rho_img`` [N], ``alpha`` = ``ûᵀm̂_c`` [N, C],
    ``beta`` = ``ûᵀΣ_i m̂_c`` [N, C], ``gamma`` = ``ûᵀΣ_i û`` [N], with ``m̂_c = μ_c / sqrt(E||v_c||²)``.
    Text side (``Q_c μ_n`` in ``Σ_t``): ``h`` = ``ρ_c v̂_cᵀμ_n`` [N, C], ``e`` = ``v̂_cᵀΣ_t μ_n`` [N, C],
    ``v_hat`` = ``v̂_c`` [C, D], ``unit_var`` = ``v̂_cᵀ Σ_t v̂_c`` [C], ``txt_cov_out`` = ``Σ_t`` [D, D],
    ``a`` = ``μ_nᵀΣ_tμ_n`` [N], ``w_base`` = ``τ² / E||u_n||²`` [N]. The C×C ``v̂_cᵀ Σ_t v̂_c'`` is only
    formed by :meth:`unit_cov`, for the class covariance.
    """

    rho_img: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    gamma: torch.Tensor
    h: torch.Tensor
    e: torch.Tensor
    v_hat: torch.Tensor
    unit_var: torch.Tensor
    txt_cov_out: torch.Tensor
    a: torch.Tensor
    w_base: torch.Tensor

    def unit_cov(self) -> torch.Tensor:
        """``v̂_cᵀ Σ_t v̂_c'`` [C, C] (formed on request)."""
        return symmetrize(self.v_hat @ self.txt_cov_out @ self.v_hat.T)


@dataclass
class CosineMoments:
    """Mean, variance parts and class covariance of ``N × C`` probabilistic logits.

    In the expected-norm and diagonal modes every image's class covariance is ``w_img[n]·K_img +
    w_txt[n]·K_txt`` for two fixed C×C matrices (method.md §3.3); in the projected mode each image adds
    its own corrections (``projection``). The [N, C, C] tensor is only formed on request (:attr:`cov`).
    """

    mean: torch.Tensor  # [N, C] logits
    var_image: torch.Tensor  # [N, C] from the image projection's posterior alone
    var_text: torch.Tensor  # [N, C] from the text projection's posterior alone
    var_interaction: torch.Tensor  # [N, C] the product term s_n t_c tr(Σ_i Σ_t)
    w_img: torch.Tensor  # [N] τ² s_n / E||u_n||²
    w_txt: torch.Tensor  # [N] τ² μ_nᵀ Σ_t μ_n / E||u_n||²
    txt_mean_scaled: torch.Tensor  # [C, D] μ_c / sqrt(E||v_c||²)
    txt_act_scaled: torch.Tensor  # [C, p_t] g̃_c / sqrt(E||v_c||²)
    img_cov_out: torch.Tensor  # [D, D] Σ_i
    txt_cov_in: torch.Tensor  # [p_t, p_t] Ã_txt⁻¹
    trace_term: torch.Tensor  # [] tr(Σ_i Σ_t)
    projection: ProjectionTerms | None = None  # set in the "projected" mode
    max_memory: int = DEFAULT_MAX_MEMORY  # bytes for the C×C-per-image work (cov, MC roots)

    @property
    def var(self) -> torch.Tensor:
        """Total logit variance [N, C] (= image + text + interaction parts)."""
        return self.var_image + self.var_text + self.var_interaction

    @property
    def structured(self) -> bool:
        """True when each image's covariance is a mix of the two fixed :attr:`class_factors`."""
        return self.projection is None

    @cached_property
    def class_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K_img, K_txt)`` [C, C]: ``K_img = M̂ Σ_i M̂ᵀ + tr(Σ_iΣ_t) T̂`` and ``K_txt = T̂``."""
        m, g = self.txt_mean_scaled, self.txt_act_scaled
        t_hat = g @ self.txt_cov_in @ g.T
        k_hat = m @ self.img_cov_out @ m.T
        return symmetrize(k_hat + self.trace_term * t_hat), symmetrize(t_hat)

    @cached_property
    def _unit_cov(self) -> torch.Tensor:
        """``v̂_cᵀ Σ_t v̂_c'`` [C, C] of the projected mode (shared by every image chunk)."""
        assert self.projection is not None
        return self.projection.unit_cov()

    def _fixed_mats(self) -> int:
        """Number of fixed C×C matrices behind every image's covariance (K_img, K_txt, and v̂Σ_tv̂ᵀ)."""
        return 2 if self.projection is None else 3

    def restrict(self, rows: slice) -> CosineMoments:
        """The moments of images ``rows`` only; the prompt-side tensors (and cached C×C factors) are shared."""
        pt = self.projection
        part = replace(self, **{f: getattr(self, f)[rows] for f in _IMAGE_FIELDS},
                       projection=None if pt is None else replace(pt, **{f: getattr(pt, f)[rows]
                                                                        for f in _IMAGE_TERMS}))
        for name in ("class_factors", "_unit_cov") + (("_roots",) if pt is None else ()):
            if name in self.__dict__:
                part.__dict__[name] = self.__dict__[name]
        return part

    def _chunks(self, step: int) -> Iterator[slice]:
        """Image slices of ``step`` images, after forming the fixed C×C factors once (chunks share them)."""
        n = self.mean.shape[0]
        if step < n:
            _ = self.class_factors if self.projection is None else (self.class_factors, self._unit_cov)
        return (slice(start, min(n, start + step)) for start in range(0, n, step))

    def cov_chunks(self, max_memory: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(rows, cov[rows])``: each image chunk's class covariance [n, C, C], streamed.

        Chunks are sized so that the fixed C×C factors and one chunk's work fit ``max_memory`` bytes
        (default :attr:`max_memory`); :class:`MemoryBudgetError` before allocating if one image cannot.
        """
        n, c = self.mean.shape
        budget = self.max_memory if max_memory is None else max_memory
        step = image_chunk("the class covariance", n, c, self.mean.element_size(), self._fixed_mats(),
                           COV_WORK, budget)
        for rows in self._chunks(step):
            yield rows, self.restrict(rows)._cov_block()

    def covariance(self, max_memory: int | None = None) -> torch.Tensor:
        """Full class covariance of each image's logits [N, C, C], assembled in image chunks.

        The N·C² result counts against ``max_memory`` bytes (default :attr:`max_memory`) together with
        the fixed factors and one chunk's work; a request over budget raises :class:`MemoryBudgetError`
        (naming N, C and the bytes needed) before anything large is allocated.
        """
        n, c = self.mean.shape
        budget = self.max_memory if max_memory is None else max_memory
        step = image_chunk("the class covariance", n, c, self.mean.element_size(), self._fixed_mats() + n,
                           COV_WORK, budget)
        if step >= n:
            return self._cov_block()
        out = self.mean.new_empty(n, c, c)
        for rows in self._chunks(step):
            out[rows] = self.restrict(rows)._cov_block()
        return out

    @cached_property
    def cov(self) -> torch.Tensor:
        """Full class covariance of each image's logits [N, C, C] (:meth:`covariance` within :attr:`max_memory`)."""
        return self.covariance()

    def draw_chunks(self, max_memory: int | None = None) -> list[slice]:
        """Image chunks whose Monte Carlo roots fit ``max_memory`` bytes (one chunk in structured modes).

        Projected mode: each image needs its own C×C Cholesky root; structured modes: two fixed C×C roots
        (and their eigendecomposition). :class:`MemoryBudgetError` if one image does not fit.
        """
        n, c = self.mean.shape
        budget = self.max_memory if max_memory is None else max_memory
        size = self.mean.element_size()
        if self.projection is None:
            image_chunk("Monte Carlo draws", n, c, size, 2 * self._fixed_mats(), 1, budget)
            return [slice(0, n)]
        return list(self._chunks(image_chunk("Monte Carlo draws", n, c, size, self._fixed_mats(), ROOT_WORK,
                                             budget)))

    def _cov_block(self) -> torch.Tensor:
        """Class covariance of every image of these moments [N, C, C] (no budget check: callers chunk)."""
        k_img, k_txt = self.class_factors
        if self.projection is None:
            return self.w_img[:, None, None] * k_img + self.w_txt[:, None, None] * k_txt
        pt = self.projection
        # ρ(αβᵀ + βαᵀ) − ρ²γ ααᵀ = ρ(αb'ᵀ + b'αᵀ) with b' = β − ργ/2 α: two rank-one terms, not three
        al = pt.alpha * pt.rho_img[:, None]
        bp = pt.beta - (0.5 * pt.rho_img * pt.gamma)[:, None] * pt.alpha
        image = k_img[None] - (al[:, :, None] * bp[:, None, :] + bp[:, :, None] * al[:, None, :])
        eh = pt.e * pt.h
        text = k_txt[None] * (pt.a[:, None, None] - eh[:, :, None] - eh[:, None, :]
                              + pt.h[:, :, None] * pt.h[:, None, :] * self._unit_cov[None])
        return self.w_img[:, None, None] * image + pt.w_base[:, None, None] * text

    @cached_property
    def _roots(self) -> tuple[torch.Tensor, ...]:
        """The draws' roots: two fixed [C, C] (structured modes) or one [N, C, C] per image (projected)."""
        chunks = self.draw_chunks()
        if len(chunks) > 1:
            n, c = self.mean.shape
            need = (self._fixed_mats() + ROOT_WORK * n) * c * c * self.mean.element_size()
            raise _budget_error("Monte Carlo draws of all images at once", n, c, need, self.max_memory)
        if self.projection is None:
            return tuple(psd_root(k) for k in self.class_factors)
        return (_cholesky_root(self._cov_block()),)

    def class_noise(self, num_samples: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Standard normal draws for :meth:`draws`, depending only on the prompts (common random numbers).

        Structured modes: correlated ``(E₁, E₂)`` [S, C] with ``Cov(E₁) = K_img``, ``Cov(E₂) = K_txt``;
        projected mode: ``(ε,)`` [S, C] white noise, coloured per image by :meth:`draws`.
        """
        c = self.mean.shape[1]

        def noise() -> torch.Tensor:
            return torch.randn(num_samples, c, dtype=self.mean.dtype, generator=generator).to(self.mean.device)

        if self.projection is not None:
            return (noise(),)
        r_img, r_txt = self._roots
        e1 = noise() @ r_img.T
        e2 = noise() @ r_txt.T
        return e1, e2

    def draws(self, noise: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Gaussian logits [S, N, C] with each image's class covariance, for noise from :meth:`class_noise`."""
        if self.projection is not None:
            (eps,) = noise
            return self.mean[None] + torch.einsum("sc,nkc->snk", eps, self._roots[0])
        e1, e2 = noise
        return (self.mean[None]
                + self.w_img.sqrt()[None, :, None] * e1[:, None, :]
                + self.w_txt.sqrt()[None, :, None] * e2[:, None, :])

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Gaussian logit draws with the full class covariance: [S, N, C].

        Draws are exact per image (marginally); the same standard normals are reused across images,
        which is fine for per-image predictives but carries no cross-image correlation.
        """
        return self.draws(self.class_noise(num_samples, generator))


_IMAGE_FIELDS = ("mean", "var_image", "var_text", "var_interaction", "w_img", "w_txt")
_IMAGE_TERMS = ("rho_img", "alpha", "beta", "gamma", "h", "e", "a", "w_base")


def _cholesky_root(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factors [N, C, C] of PSD covariances, with the smallest jitter that succeeds.

    Differentiable (used by the entropy attribution targets); the jitter is relative to the mean variance.
    """
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(cov.dtype).tiny)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    for jitter in _JITTERS:
        root, info = torch.linalg.cholesky_ex(cov + jitter * scale[:, None, None] * eye)
        if not bool(info.any()):
            return root
    raise torch.linalg.LinAlgError("class covariance is not positive semi-definite (even with jitter)")


@dataclass
class PromptTerms:
    """The prompt side of the moments for one label set and posterior: O(C (D + p_t) + D² + p_t²) memory.

    Depends only on the prompts, so a fixed label set (zero-shot classification) computes it once
    (:func:`prompt_terms`) and reuses it for every batch of images (:func:`image_moments`). Holds the
    posterior matrices of the variance mode (diagonalised in the ``"diagonal"`` mode).
    """

    mode: str  # canonical variance mode
    txt_mean: torch.Tensor  # [C, D] μ_c
    txt_act: torch.Tensor  # [C, p_t] g̃_c
    txt_sq: torch.Tensor  # [C] E||v_c||²
    k_c: torch.Tensor  # [C] m̂_cᵀ Σ_i m̂_c
    t_hat: torch.Tensor  # [C] t_c / E||v_c||²
    unit_var: torch.Tensor  # [C] v̂_cᵀ Σ_t v̂_c
    img_cov_out: torch.Tensor  # [D, D] Σ_i
    txt_cov_out: torch.Tensor  # [D, D] Σ_t
    txt_cov_in: torch.Tensor  # [p_t, p_t] Ã_txt⁻¹
    trace_term: torch.Tensor  # [] tr(Σ_i Σ_t)
    inv_v: torch.Tensor  # [C] 1 / sqrt(E||v_c||²)
    m_hat: torch.Tensor  # [C, D] m̂_c = μ_c / sqrt(E||v_c||²)
    act_scaled: torch.Tensor  # [C, p_t] g̃_c / sqrt(E||v_c||²)
    v_hat: torch.Tensor  # [C, D] v̂_c = μ_c / ||μ_c|| (projected mode; else empty)
    inv_vn: torch.Tensor  # [C] 1 / ||μ_c|| (projected mode; else empty)
    h_scale: torch.Tensor  # [C] ρ_c / ||μ_c|| = ||μ_c|| / E||v_c||² (projected mode; else empty)


def prompt_terms(txt_mean: torch.Tensor, txt_act: torch.Tensor, img_cov_out: torch.Tensor,
                 txt_cov_out: torch.Tensor, txt_cov_in: torch.Tensor, *, variance: str = "projected") -> PromptTerms:
    """:class:`PromptTerms` of C prompts (arguments as in :func:`cosine_moments`): O(C (D² + p_t²)) time.

    Everything that depends on the prompts alone is formed here, once per label set, so that
    :func:`image_moments` does no O(C·D) work besides its one product with the prompts' embeddings.
    """
    mode = variance_mode(check_option("variance", variance))
    if mode == "diagonal":
        img_cov_out, txt_cov_out = torch.diag(img_cov_out.diagonal()), torch.diag(txt_cov_out.diagonal())
    t_diag = ((txt_act @ txt_cov_in) * txt_act).sum(-1)  # t_c [C]
    norm2 = txt_mean.square().sum(-1)
    txt_sq = norm2 + t_diag * txt_cov_out.diagonal().sum()  # E||v||² [C]
    inv_v = txt_sq.rsqrt()
    m_hat = txt_mean * inv_v[:, None]
    projected = mode == "projected"
    empty = t_diag.new_zeros(0)
    inv_vn = norm2.clamp_min(torch.finfo(txt_mean.dtype).tiny).rsqrt() if projected else empty
    v_hat = txt_mean * inv_vn[:, None] if projected else txt_mean.new_zeros(0, txt_mean.shape[1])
    return PromptTerms(
        mode=mode, txt_mean=txt_mean, txt_act=txt_act, txt_sq=txt_sq,
        k_c=((m_hat @ img_cov_out) * m_hat).sum(-1),
        t_hat=t_diag / txt_sq,
        unit_var=((v_hat @ txt_cov_out) * v_hat).sum(-1) if projected else empty,
        img_cov_out=img_cov_out, txt_cov_out=txt_cov_out, txt_cov_in=txt_cov_in,
        trace_term=(img_cov_out * txt_cov_out).sum(),  # tr(Σ_i Σ_t), both symmetric
        inv_v=inv_v, m_hat=m_hat, act_scaled=txt_act * inv_v[:, None], v_hat=v_hat, inv_vn=inv_vn,
        h_scale=norm2 / txt_sq * inv_vn if projected else empty,
    )


def cosine_moments(
    img_mean: torch.Tensor,
    img_scale: torch.Tensor,
    txt_mean: torch.Tensor,
    txt_act: torch.Tensor,
    img_cov_out: torch.Tensor,
    txt_cov_out: torch.Tensor,
    txt_cov_in: torch.Tensor,
    logit_scale: float,
    logit_bias: float = 0.0,
    *,
    variance: str = "projected",
) -> CosineMoments:
    """Moments of the logits ``τ·cos(u_n, v_c) + b`` for all image/prompt pairs.

    Args:
        img_mean: [N, D] mean image embeddings ``μ_n`` (un-normalised, residual included).
        img_scale: [N] ``s_n = f̃_nᵀ Ã_img⁻¹ f̃_n``.
        txt_mean: [C, D] mean prompt embeddings ``μ_c``.
        txt_act: [C, p_t] text activations ``g̃_c`` entering the text projection (with the constant 1
            appended when it has a bias).
        img_cov_out, txt_cov_out: [D, D] ``B̃_img⁻¹``, ``B̃_txt⁻¹``.
        txt_cov_in: [p_t, p_t] ``Ã_txt⁻¹``.
        logit_scale: ``τ = exp(logit_scale parameter)``.
        logit_bias: added to the mean (SigLIP); 0 for CLIP.
        variance: ``"projected"`` (default), ``"expected_norm"`` (``"exact"``) or ``"diagonal"``; see the
            module doc.
    """
    terms = prompt_terms(txt_mean, txt_act, img_cov_out, txt_cov_out, txt_cov_in, variance=variance)
    return image_moments(img_mean, img_scale, terms, logit_scale, logit_bias)


def image_moments(img_mean: torch.Tensor, img_scale: torch.Tensor, terms: PromptTerms, logit_scale: float,
                  logit_bias: float = 0.0) -> CosineMoments:
    """:func:`cosine_moments` of N images [N, D] (scales ``s_n`` [N]) against precomputed prompt terms.

    One [N, D] × [D, C] product in the structured modes, one [3N, D] × [D, C] in the projected mode
    (``μ_nᵀμ_c``, ``(Σ_i û_n)ᵀμ_c`` and ``(Σ_t μ_n)ᵀμ_c`` share the prompts' matrix), then O(N C)
    elementwise work: O(N C + N D) memory on top of the prompt terms.
    """
    tp = terms
    sig_t_mu = img_mean @ tp.txt_cov_out  # Σ_t μ_n [N, D]
    a_n = (sig_t_mu * img_mean).sum(-1)  # μ_nᵀ Σ_t μ_n [N]
    img_sq = img_mean.square().sum(-1) + img_scale * tp.img_cov_out.diagonal().sum()  # E||u||² [N]
    inv_u, inv_v = img_sq.rsqrt(), tp.inv_v
    w_base = logit_scale**2 * inv_u.square()  # τ² / E||u_n||² [N]
    w_img = w_base * img_scale  # [N]
    w_txt = w_base * a_n  # [N]
    projection = None
    if tp.mode == "projected":
        n = img_mean.shape[0]
        tiny = torch.finfo(img_mean.dtype).tiny
        u_norm2 = img_mean.square().sum(-1)
        inv_un = u_norm2.clamp_min(tiny).rsqrt()  # 1 / ||μ_n||
        u_hat = img_mean * inv_un[:, None]
        sig_i_u = u_hat @ tp.img_cov_out  # (Σ_i û_n)ᵀ [N, D]
        gram = torch.cat([img_mean, sig_i_u, sig_t_mu]) @ tp.txt_mean.T  # [3N, C]
        inner, sig_i_inner, sig_t_inner = gram[:n], gram[n:2 * n], gram[2 * n:]
        mean = logit_scale * inner * inv_u[:, None] * inv_v[None, :] + logit_bias
        pt = ProjectionTerms(
            rho_img=u_norm2 / img_sq,
            alpha=inner * inv_un[:, None] * inv_v[None, :],  # ûᵀ m̂_c
            beta=sig_i_inner * inv_v[None, :],  # ûᵀ Σ_i m̂_c
            gamma=(sig_i_u * u_hat).sum(-1),
            h=inner * tp.h_scale[None, :],  # ρ_c v̂_cᵀ μ_n
            e=sig_t_inner * tp.inv_vn[None, :],  # v̂_cᵀ Σ_t μ_n
            v_hat=tp.v_hat,
            unit_var=tp.unit_var,
            txt_cov_out=tp.txt_cov_out,
            a=a_n,
            w_base=w_base,
        )
        projection = pt
        var_image = w_img[:, None] * (tp.k_c[None, :] - 2 * pt.rho_img[:, None] * pt.alpha * pt.beta
                                      + (pt.rho_img.square() * pt.gamma)[:, None] * pt.alpha.square())
        var_text = w_base[:, None] * tp.t_hat[None, :] * (
            a_n[:, None] - 2 * pt.h * pt.e + pt.h.square() * pt.unit_var[None, :])
    else:
        mean = logit_scale * (img_mean @ tp.txt_mean.T) * inv_u[:, None] * inv_v[None, :] + logit_bias
        var_image = w_img[:, None] * tp.k_c[None, :]
        var_text = w_txt[:, None] * tp.t_hat[None, :]
    return CosineMoments(
        mean=mean,
        var_image=var_image,
        var_text=var_text,
        var_interaction=tp.trace_term * w_img[:, None] * tp.t_hat[None, :],
        w_img=w_img,
        w_txt=w_txt,
        txt_mean_scaled=tp.m_hat,
        txt_act_scaled=tp.act_scaled,
        img_cov_out=tp.img_cov_out,
        txt_cov_in=tp.txt_cov_in,
        trace_term=tp.trace_term,
        projection=projection,
    )
