"""Kronecker-factored Laplace posteriors over the two projection layers.

Convention (method.md §1, §2.4): a projection ``y = W x̃`` with ``W ∈ R^{D×p}`` (``x̃ = [x; 1]`` when the
layer has a bias) has the posterior ``vec(W) ~ N(vec W*, Ã⁻¹ ⊗ B̃⁻¹)`` with

    Ã = √n · A + √λ · I_p,      B̃ = √n · B + √λ · I_D,

where ``A`` (p×p, input activations) and ``B`` (D×D, loss curvature w.r.t. the outputs) are the stored
factors ``Σ ã ãᵀ / √N`` and ``Σ H / √N`` (method.md §2.2), ``n`` the pseudo-count and ``λ`` the prior
precision. For a fixed input, ``Cov(W x̃) = (x̃ᵀ Ã⁻¹ x̃) · B̃⁻¹``.

On disk a posterior is a directory with ``posterior.safetensors`` (the four factors) and
``posterior.json`` (dimensions, n, λ and provenance). The authors' published layout (method.md §9) is
read by :meth:`Posterior.from_reference_dir`, never unpickling anything but plain tensors.

Every file is checked before use and refused with a :class:`PosteriorError` naming the file or field
(nothing is only warned about): a JSON field of the wrong type or value; a file that is a link leaving
the posterior directory; a factor that is not a dense floating-point square matrix (sparse, integer,
complex, or an expanded/overlapping view storing fewer numbers than it declares); a factor larger than
:data:`MAX_FACTOR_DIM` or, when the loader is given the model's dimensions, of another size (both checked
from the file's header, before anything is materialised); a factor that is not symmetric positive
semi-definite beyond round-off (:data:`ROUNDOFF`, relative to its largest entry / diagonal entry).
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .numerics import symmetrize

FORMAT_VERSION = 1
WEIGHTS_FILE = "posterior.safetensors"
META_FILE = "posterior.json"
REFERENCE_FILES = {
    ("image", "A"): "A_img_analytic.pt",
    ("image", "B"): "B_img_analytic.pt",
    ("text", "A"): "A_txt_analytic.pt",
    ("text", "B"): "B_txt_analytic.pt",
}
REFERENCE_JSON = "prior_precision_analytic.json"
MAX_FACTOR_DIM = 16_384
"""Largest accepted factor side (a float64 16384² factor is 2 GiB); larger files are refused unread."""
ROUNDOFF = 1e-4
"""Relative tolerance for asymmetry and negative eigenvalues of stored factors (float32 accumulation
round-off; the authors' ViT-B/32 factors reach 3e-6)."""
SIDES = ("image", "text")
Dims = Mapping[str, tuple[int, int]]
"""Expected ``{side: (p, D)}`` of a model's projections, as given by ``BayesVLM.projection_dims``."""


class PosteriorError(ValueError):
    """A posterior that cannot be used: bad file, wrong shape, or made for another model."""


def _as_factor(x: Any, name: str) -> torch.Tensor:
    """Validate a dense, square, floating-point, symmetric PSD factor; return it symmetrised in float64
    on the CPU (PSD up to :data:`ROUNDOFF`, checked by a Cholesky factorisation of a shifted copy)."""
    if not isinstance(x, torch.Tensor):
        raise PosteriorError(f"factor {name} must be a tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise PosteriorError(f"factor {name} is a {x.layout} tensor; expected a dense one")
    if x.is_complex() or not x.is_floating_point():
        raise PosteriorError(f"factor {name} has dtype {x.dtype}; expected floating point")
    _check_shape(tuple(x.shape), name, None)
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise PosteriorError(f"factor {name} has non-finite entries")
    scale = x.abs().max()
    if (x - x.T).abs().max() > ROUNDOFF * scale:
        raise PosteriorError(f"factor {name} is not symmetric (beyond round-off)")
    x = symmetrize(x)
    shift = 2 * ROUNDOFF * x.diagonal().max().clamp_min(torch.finfo(torch.float64).tiny)
    if torch.linalg.cholesky_ex(x + shift * torch.eye(x.shape[0], dtype=x.dtype)).info != 0:
        raise PosteriorError(f"factor {name} is not positive semi-definite (beyond round-off)")
    return x


def _check_shape(shape: tuple[int, ...], name: str, expected: int | None) -> None:
    """Refuse a factor shape that is not square, too large, or not ``expected`` × ``expected``."""
    if len(shape) != 2 or shape[0] != shape[1]:
        raise PosteriorError(f"factor {name} must be a square 2-D tensor, got {shape}")
    if shape[0] > MAX_FACTOR_DIM:
        raise PosteriorError(f"factor {name} is {shape[0]}x{shape[1]}; the limit is {MAX_FACTOR_DIM}")
    if expected is not None and shape[0] != expected:
        raise PosteriorError(f"factor {name} is {shape[0]}x{shape[1]}, but the model needs {expected}x{expected}")


def _expected_side(dims: Dims | None, side: str, key: str) -> int | None:
    """The expected side length of factor ``key`` ("A": p, "B": D) of ``side``, if dims are given."""
    if dims is None:
        return None
    p, d = dims[side]
    return p if key == "A" else d


def _inside(directory: Path, name: str) -> Path:
    """``directory / name``, refused if it is a link (or ``..``) leading out of ``directory``."""
    path = directory / name
    if path.exists() and not path.resolve().is_relative_to(directory.resolve()):
        raise PosteriorError(f"{name} in {directory.name} links outside its directory; refusing it")
    return path


def _positive_number(value: Any, name: str) -> float:
    """``float(value)`` if it is a positive finite real number (not a bool or a string)."""
    try:
        ok = not isinstance(value, bool | str) and math.isfinite(value) and value > 0
    except (TypeError, OverflowError):
        ok = False
    if not ok:
        raise PosteriorError(f"{name} must be a positive finite number, got {str(value)[:40]!r}")
    return float(value)


def _count(value: Any, field: str) -> int | None:
    """A non-negative integer (or null) from a JSON field."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PosteriorError(f"field {field} must be a non-negative integer, got {str(value)[:40]!r}")
    return value


MAX_JSON_BYTES = 1 << 20  # a posterior's JSON holds a few numbers and provenance
MAX_JSON_DEPTH = 32
MAX_JSON_DIGITS = 30  # digits of one JSON number (a float has 17 significant digits)


def _json_number(text: str) -> float | int:
    if len(text.lstrip("-").split("e")[0].split("E")[0].replace(".", "")) > MAX_JSON_DIGITS:
        raise PosteriorError(f"a number of {len(text)} characters ({text[:20]}...); at most {MAX_JSON_DIGITS} digits")
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise PosteriorError(f"the number {text[:20]} is out of range")
    return value


def _json_constant(name: str) -> Any:
    raise PosteriorError(f"{name} is not a JSON number")


def _json_depth(text: str) -> int:
    """Deepest nesting of arrays and objects in JSON ``text`` (brackets inside strings ignored)."""
    depth = deepest = 0
    for token in re.findall(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _json_object(path: Path) -> dict[str, Any]:
    """Parse a JSON file that must hold an object: at most :data:`MAX_JSON_BYTES` bytes and
    :data:`MAX_JSON_DEPTH` levels, numbers of at most :data:`MAX_JSON_DIGITS` digits and finite (no
    ``NaN``/``Infinity``); every failure is a :class:`PosteriorError` naming the file."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise PosteriorError(f"{path.name} is {path.stat().st_size:,} bytes; at most {MAX_JSON_BYTES:,}")
        text = path.read_text(encoding="utf-8")
        if _json_depth(text) > MAX_JSON_DEPTH:
            raise PosteriorError(f"{path.name} nests deeper than {MAX_JSON_DEPTH} levels")
        obj = json.loads(text, parse_int=_json_number, parse_float=_json_number, parse_constant=_json_constant)
    except PosteriorError as err:
        msg = str(err)
        raise PosteriorError(msg if msg.startswith(path.name) else f"{path.name}: {msg}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as err:
        raise PosteriorError(f"{path.name} is not valid JSON: {str(err)[:200]}") from err
    if not isinstance(obj, dict):
        raise PosteriorError(f"{path.name} must hold a JSON object, not a {type(obj).__name__}")
    return obj


class KronPosterior:
    """Posterior of one projection layer: stored factors ``A`` [p, p], ``B`` [D, D], ``n`` and ``λ``.

    ``A``/``B`` are the curvature factors before the prior (reference convention, see module doc).
    Inverses and Cholesky factors of ``Ã``/``B̃`` are cached per (device, dtype) and dropped whenever
    ``A``, ``B``, ``pseudo_count`` or ``prior_precision`` are assigned; a lock keeps the cache consistent
    when several threads predict at once. Assigning ``A``/``B`` validates the new factor (same shape).
    """

    _n: float
    _lam: float

    def __init__(
        self,
        A: torch.Tensor,
        B: torch.Tensor,
        *,
        pseudo_count: float = 1.0,
        prior_precision: float = 1.0,
        num_pairs: int | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._cache: dict[Any, Any] = {}  # (kind, device, dtype) and "cpu64"
        self._A = _as_factor(A, "A")
        self._B = _as_factor(B, "B")
        self.num_pairs = num_pairs
        self.pseudo_count = pseudo_count
        self.prior_precision = prior_precision

    # -- factors and hyperparameters --------------------------------------------------------------
    @property
    def A(self) -> torch.Tensor:  # noqa: N802 - the method's name for the factor
        """Input-activation factor ``A`` [p, p] (float64, symmetric PSD)."""
        return self._A

    @A.setter
    def A(self, value: torch.Tensor) -> None:  # noqa: N802
        self._assign("_A", self._replacement(value, self._A, "A"))

    @property
    def B(self) -> torch.Tensor:  # noqa: N802
        """Output-curvature factor ``B`` [D, D] (float64, symmetric PSD)."""
        return self._B

    @B.setter
    def B(self, value: torch.Tensor) -> None:  # noqa: N802
        self._assign("_B", self._replacement(value, self._B, "B"))

    @staticmethod
    def _replacement(value: torch.Tensor, old: torch.Tensor, name: str) -> torch.Tensor:
        new = _as_factor(value, name)
        if new.shape != old.shape:
            raise PosteriorError(f"factor {name} must stay {tuple(old.shape)}, got {tuple(new.shape)}; "
                                 "build a new KronPosterior for another model")
        return new

    def _assign(self, attr: str, value: Any) -> None:
        """Set ``attr`` and drop the derived matrices in one step, so no thread caches a stale one."""
        with self._lock:
            setattr(self, attr, value)
            self._cache.clear()

    @property
    def pseudo_count(self) -> float:
        """Pseudo-count ``n`` (a tempering factor on the likelihood, method.md §2.4)."""
        return self._n

    @pseudo_count.setter
    def pseudo_count(self, value: float) -> None:
        self._assign("_n", _positive_number(value, "pseudo_count"))

    @property
    def prior_precision(self) -> float:
        """Prior precision ``λ`` of the isotropic Gaussian prior."""
        return self._lam

    @prior_precision.setter
    def prior_precision(self, value: float) -> None:
        self._assign("_lam", _positive_number(value, "prior_precision"))

    @property
    def dim_in(self) -> int:
        """``p`` (including the constant-1 column for a bias)."""
        return self.A.shape[0]

    @property
    def dim_out(self) -> int:
        """``D``, the joint embedding dimension."""
        return self.B.shape[0]

    # -- derived matrices ------------------------------------------------------------------------
    def precision_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Ã, B̃)`` in float64: [p, p] and [D, D]."""
        rn, rl = math.sqrt(self._n), math.sqrt(self._lam)
        eye_a = torch.eye(self.dim_in, dtype=torch.float64)
        eye_b = torch.eye(self.dim_out, dtype=torch.float64)
        return rn * self.A + rl * eye_a, rn * self.B + rl * eye_b

    @torch.inference_mode(False)  # cached tensors must stay usable by autograd (attributions)
    def _derived(self, kind: str, device: torch.device | str, dtype: torch.dtype) -> Any:
        key = (kind, str(device), dtype)
        with self._lock:
            return self._cache[key] if key in self._cache else self._compute(key)

    def _compute(self, key: tuple[str, str, torch.dtype]) -> Any:
        """Fill ``self._cache[key]`` (and the float64 CPU master entry); the caller holds the lock."""
        kind, device, dtype = key
        if "cpu64" not in self._cache:
            a_prec, b_prec = self.precision_factors()
            try:
                a_inv = torch.cholesky_inverse(torch.linalg.cholesky(a_prec))
                b_inv = torch.cholesky_inverse(torch.linalg.cholesky(b_prec))
                a_inv, b_inv = symmetrize(a_inv), symmetrize(b_inv)
                sqrt = (torch.linalg.cholesky(a_inv), torch.linalg.cholesky(b_inv))
            except torch.linalg.LinAlgError as err:
                raise PosteriorError(
                    "posterior precision is not positive definite; increase prior_precision"
                ) from err
            self._cache["cpu64"] = {"cov": (a_inv, b_inv), "sqrt": sqrt}
        a, b = self._cache["cpu64"][kind]
        self._cache[key] = (a.to(device, dtype), b.to(device, dtype))
        return self._cache[key]

    def covariance_factors(
        self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Ã⁻¹, B̃⁻¹)``: [p, p] and [D, D], so that ``Cov(vec W) = Ã⁻¹ ⊗ B̃⁻¹``."""
        return self._derived("cov", device, dtype)

    def sqrt_covariance_factors(
        self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower Cholesky factors ``(L_A, L_B)`` with ``L_A L_Aᵀ = Ã⁻¹`` and ``L_B L_Bᵀ = B̃⁻¹``."""
        return self._derived("sqrt", device, dtype)

    def input_scales(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x̃ᵀ Ã⁻¹ x̃`` per row of ``x`` [N, p] -> [N]; with ``y`` [M, p] the cross matrix [N, M]."""
        a_inv, _ = self.covariance_factors(x.device, x.dtype)
        ax = x @ a_inv
        if y is None:
            return (ax * x).sum(-1)
        return ax @ y.T

    def sample_weight_noise(
        self, num_samples: int, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """Draws of ``W − W*`` from the matrix normal ``MN(0, B̃⁻¹, Ã⁻¹)``: [S, D, p]."""
        la, lb = self.sqrt_covariance_factors(device, dtype)
        z = torch.randn(num_samples, self.dim_out, self.dim_in, generator=generator, dtype=dtype)
        return lb @ z.to(device) @ la.T

    def sample_outputs(
        self, x: torch.Tensor, mean: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Outputs ``μ + (W − W*) x̃`` for matrix-normal weight draws: [S, N, D] (float64, CPU).

        ``x`` [N, p] are the (augmented) inputs and ``mean`` [N, D] the MAP outputs. Each draw is a full
        weight matrix ``W − W* = L_B Z L_Aᵀ`` (``Z`` standard normal [D, p]), applied to all N inputs.
        """
        la, lb = self.sqrt_covariance_factors(x.device, x.dtype)
        h = x @ la  # rows L_Aᵀ x̃  [N, p]
        chunk = max(1, (1 << 24) // (self.dim_out * self.dim_in))
        out = []
        for start in range(0, num_samples, chunk):
            s = min(chunk, num_samples - start)
            z = torch.randn(s, self.dim_out, self.dim_in, dtype=x.dtype, generator=generator).to(x.device)
            out.append(mean[None] + (lb @ (z @ h.T)).transpose(1, 2))
        return torch.cat(out)

    def to_json(self) -> dict[str, Any]:
        """Hyperparameters and dimensions (no tensors)."""
        return {
            "dim_in": self.dim_in,
            "dim_out": self.dim_out,
            "pseudo_count": self._n,
            "prior_precision": self._lam,
            "num_pairs": self.num_pairs,
        }

    def __repr__(self) -> str:
        return (
            f"KronPosterior(p={self.dim_in}, D={self.dim_out}, n={self._n:g}, "
            f"prior_precision={self._lam:g}, num_pairs={self.num_pairs})"
        )


class Posterior:
    """The image-side and text-side posteriors of one model, with provenance metadata."""

    def __init__(self, image: KronPosterior, text: KronPosterior, metadata: Mapping[str, Any] | None = None):
        self.image = image
        self.text = text
        self.metadata: dict[str, Any] = dict(metadata or {})

    def sides(self) -> dict[str, KronPosterior]:
        return {"image": self.image, "text": self.text}

    def copy(self) -> Posterior:
        """A posterior whose ``n``, ``λ`` and metadata can change without touching this one (the factors
        ``A``/``B`` are shared: they are never modified in place)."""
        def side(post: KronPosterior) -> KronPosterior:
            return KronPosterior(post.A, post.B, pseudo_count=post.pseudo_count,
                                 prior_precision=post.prior_precision, num_pairs=post.num_pairs)
        return Posterior(side(self.image), side(self.text), copy.deepcopy(self.metadata))

    def check_compatible(
        self, image_dims: tuple[int, int], text_dims: tuple[int, int], model_name: str | None = None
    ) -> None:
        """Raise :class:`PosteriorError` unless the factors fit projections of ``(p, D)`` shape."""
        for side, (p, d) in (("image", image_dims), ("text", text_dims)):
            post = getattr(self, side)
            if (post.dim_in, post.dim_out) != (p, d):
                made_for = self.metadata.get("model") or "another model"
                raise PosteriorError(
                    f"{side} posterior has A {post.dim_in}x{post.dim_in}, B {post.dim_out}x{post.dim_out}, "
                    f"but the model's {side} projection needs A {p}x{p}, B {d}x{d}; "
                    f"this posterior was made for {made_for}"
                    + (f", not {model_name}" if model_name else "")
                )

    # -- our format ------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``posterior.safetensors`` + ``posterior.json`` into ``directory``; return it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"{side}.{k}": getattr(post, k).contiguous() for side, post in self.sides().items()
                   for k in ("A", "B")}
        save_file(tensors, str(directory / WEIGHTS_FILE))
        meta = {"format_version": FORMAT_VERSION, **self.metadata,
                "image": self.image.to_json(), "text": self.text.to_json()}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, path: str | Path, *, dims: Dims | None = None) -> Posterior:
        """Read a directory written by :meth:`save` (or the path of its safetensors file).

        ``dims`` (``{side: (p, D)}``, optional) are the model's projection sizes: factors of another size
        are refused from the file's header, before they are read (module doc lists every check).
        """
        path = Path(path)
        directory = path.parent if path.is_file() else path
        weights, meta_path = _inside(directory, WEIGHTS_FILE), _inside(directory, META_FILE)
        if not weights.is_file() or not meta_path.is_file():
            if (directory / REFERENCE_JSON).is_file():
                raise PosteriorError(
                    f"{directory} is in the reference layout; use Posterior.from_reference_dir"
                )
            raise PosteriorError(f"no {WEIGHTS_FILE} and {META_FILE} in {directory}")
        meta = _json_object(meta_path)
        version = meta.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise PosteriorError(f"field format_version must be a non-negative integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise PosteriorError(f"posterior format {version} is newer than this library")
        tensors = _read_safetensors(weights, dims)
        sides = {}
        for side in SIDES:
            info = meta.get(side, {})
            if not isinstance(info, dict):
                raise PosteriorError(f"field {side} of {META_FILE} must be an object, got {type(info).__name__}")
            a, b = tensors[f"{side}.A"], tensors[f"{side}.B"]
            for key, val in (("dim_in", a.shape[0]), ("dim_out", b.shape[0])):
                if key in info and info[key] != val:
                    raise PosteriorError(f"field {side}.{key} is {info[key]!r} in {META_FILE} but {val} in tensors")
            sides[side] = _side(
                side, WEIGHTS_FILE, a, b,
                pseudo_count=_positive_number(info.get("pseudo_count", 1.0), f"field {side}.pseudo_count"),
                prior_precision=_positive_number(info.get("prior_precision", 1.0),
                                                 f"field {side}.prior_precision"),
                num_pairs=_count(info.get("num_pairs"), f"{side}.num_pairs"),
            )
        extra = {k: v for k, v in meta.items() if k not in (*SIDES, "format_version")}
        return cls(sides["image"], sides["text"], extra)

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: str) -> Posterior:
        """The posterior shipped with the library for open_clip ``(model_name, pretrained)``.

        E.g. ``Posterior.from_pretrained("ViT-B-32", "laion2b_s34b_b79k")``: the authors' factors with λ
        from the corrected marginal likelihood (method.md §2.5). Known pairs are listed in
        :data:`bayesvlm_explain.pretrained.registry.KNOWN_POSTERIORS`; any other raises
        :class:`PosteriorError` saying how to fit one.
        """
        from .pretrained.registry import KNOWN_POSTERIORS, known_posterior_dir

        directory = known_posterior_dir(model_name, pretrained)
        if directory is None:
            known = ", ".join(f"({m!r}, {t!r})" for m, t in KNOWN_POSTERIORS)
            raise PosteriorError(
                f"no built-in posterior for ({model_name!r}, {pretrained!r}); known: {known}. Fit one on "
                f"image-text pairs with `bayesvlm-explain fit --model {model_name} --pretrained {pretrained} "
                "--data PAIRS --out DIR` (or vlm.fit(pairs)) and load it with Posterior.load(DIR)"
            )
        return cls.load(directory)

    # -- the authors' layout (method.md §9) ------------------------------------------------------
    @classmethod
    def from_reference_dir(
        cls, directory: str | Path, *, pseudo_count: float | None = None,
        prior_precision: tuple[float, float] | None = None, dims: Dims | None = None,
    ) -> Posterior:
        """Read ``A_img_analytic.pt`` … ``prior_precision_analytic.json`` (BayesVLM's published layout).

        Each ``.pt`` must hold one bare tensor; it is read with ``torch.load(weights_only=True)`` on the
        CPU, so no code in the file is ever run, and anything but a plain square tensor is refused.
        ``pseudo_count``/``prior_precision`` (image, text) override the JSON values; ``dims`` as in
        :meth:`load`. Note that the published λ come from a marginal likelihood with a wrong
        log-determinant (method.md §2.5).
        """
        directory = Path(directory)
        js_path = _inside(directory, REFERENCE_JSON)
        if not js_path.is_file():
            raise PosteriorError(f"{directory} has no {REFERENCE_JSON}")
        hyper = _json_object(js_path)
        factors = {(side, k): _load_reference_tensor(_inside(directory, name), _expected_side(dims, side, k))
                   for (side, k), name in REFERENCE_FILES.items()}
        sides = {}
        for side, suffix in (("image", "img"), ("text", "txt")):
            if f"lambda_{suffix}" not in hyper:
                raise PosteriorError(f"{REFERENCE_JSON} lacks lambda_{suffix}")
            lam = _positive_number(hyper[f"lambda_{suffix}"], f"field lambda_{suffix}")
            n = _positive_number(hyper.get(f"n_{suffix}", 1.0), f"field n_{suffix}")
            if prior_precision is not None:
                lam = float(prior_precision[0 if side == "image" else 1])
            sides[side] = _side(
                side, f"{REFERENCE_FILES[(side, 'A')]}/{REFERENCE_FILES[(side, 'B')]}",
                factors[(side, "A")], factors[(side, "B")],
                pseudo_count=pseudo_count if pseudo_count is not None else n, prior_precision=lam,
            )
        meta = {"source": "reference", "reference_dir": str(directory), "likelihood": "unknown",
                "note": "lambda from the reference's marginal likelihood (wrong log-det, method.md 2.5)"}
        return cls(sides["image"], sides["text"], meta)

    def save_reference_dir(self, directory: str | Path) -> Path:
        """Write the factors in the reference layout (bare float32 tensors + JSON), for interop."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for (side, k), name in REFERENCE_FILES.items():
            torch.save(getattr(getattr(self, side), k).to(torch.float32).contiguous(), directory / name)
        hyper = {"lambda_img": self.image.prior_precision, "n_img": self.image.pseudo_count,
                 "lambda_txt": self.text.prior_precision, "n_txt": self.text.pseudo_count}
        (directory / REFERENCE_JSON).write_text(json.dumps(hyper, indent=4))
        return directory

    def __repr__(self) -> str:
        return f"Posterior(image={self.image!r}, text={self.text!r})"


def _read_safetensors(path: Path, dims: Dims | None) -> dict[str, torch.Tensor]:
    """The four factors ``{side}.{A,B}`` of a posterior file, shapes checked from the header first."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = set(f.keys())
            tensors = {}
            for side in SIDES:
                for k in ("A", "B"):
                    name = f"{side}.{k}"
                    if name not in names:
                        raise PosteriorError(f"{path.name} lacks tensor {name!r}")
                    _check_shape(tuple(f.get_slice(name).get_shape()), name, _expected_side(dims, side, k))
                    tensors[name] = f.get_tensor(name)
    except (OSError, SafetensorError) as err:
        raise PosteriorError(f"cannot read {path.name}: {err}") from err
    return tensors


def _load_reference_tensor(path: Path, expected: int | None = None) -> torch.Tensor:
    """Load one bare tensor saved with ``torch.save``; refuse anything else without executing it.

    The file is memory-mapped, so its declared shape, layout, dtype and storage size are checked before
    any of it is copied: an expanded (stride-0) view cannot blow up into a large factor.
    """
    if not path.is_file():
        raise PosteriorError(f"missing reference factor {path.name}")
    if not zipfile.is_zipfile(path):
        raise PosteriorError(f"{path.name} is not a torch zip archive; refusing to unpickle it")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, ValueError, EOFError, TypeError) as err:
        raise PosteriorError(
            f"refusing {path.name}: it is not a plain tensor file (weights-only load failed: {err})"
        ) from err
    if not isinstance(obj, torch.Tensor):
        raise PosteriorError(f"{path.name} holds a {type(obj).__name__}, not a bare tensor")
    if obj.layout != torch.strided:
        raise PosteriorError(f"{path.name} holds a {obj.layout} tensor; expected a dense one")
    _check_shape(tuple(obj.shape), path.name, expected)
    if obj.untyped_storage().nbytes() < obj.numel() * obj.element_size():
        raise PosteriorError(f"{path.name} declares {tuple(obj.shape)} but stores fewer numbers "
                             "(an expanded or overlapping view); save a dense tensor")
    return obj


def _side(side: str, source: str, a: torch.Tensor, b: torch.Tensor, **hyper: Any) -> KronPosterior:
    """A side's :class:`KronPosterior`, with factor errors naming the side and the file."""
    try:
        return KronPosterior(a, b, **hyper)
    except PosteriorError as err:
        raise PosteriorError(f"{side} posterior ({source}): {err}") from err
