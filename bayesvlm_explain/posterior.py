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
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

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


class PosteriorError(ValueError):
    """A posterior that cannot be used: bad file, wrong shape, or made for another model."""


def _as_factor(x: torch.Tensor, name: str) -> torch.Tensor:
    """Validate a square factor and return it symmetrised in float64 on the CPU."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] != x.shape[1]:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise PosteriorError(f"factor {name} must be a square 2-D tensor, got {shape}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise PosteriorError(f"factor {name} has non-finite entries")
    return 0.5 * (x + x.T)


class KronPosterior:
    """Posterior of one projection layer: stored factors ``A`` [p, p], ``B`` [D, D], ``n`` and ``λ``.

    ``A``/``B`` are the curvature factors before the prior (reference convention, see module doc).
    Inverses and Cholesky factors of ``Ã``/``B̃`` are cached per (device, dtype) and dropped whenever
    ``pseudo_count`` or ``prior_precision`` change.
    """

    def __init__(
        self,
        A: torch.Tensor,
        B: torch.Tensor,
        *,
        pseudo_count: float = 1.0,
        prior_precision: float = 1.0,
        num_pairs: int | None = None,
    ) -> None:
        self.A = _as_factor(A, "A")
        self.B = _as_factor(B, "B")
        self.num_pairs = num_pairs
        self._cache: dict[tuple[str, Any], Any] = {}
        self.pseudo_count = pseudo_count
        self.prior_precision = prior_precision

    # -- hyperparameters -------------------------------------------------------------------------
    @property
    def pseudo_count(self) -> float:
        """Pseudo-count ``n`` (a tempering factor on the likelihood, method.md §2.4)."""
        return self._n

    @pseudo_count.setter
    def pseudo_count(self, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise PosteriorError(f"pseudo_count must be a positive finite number, got {value}")
        self._n = float(value)
        self._cache.clear()

    @property
    def prior_precision(self) -> float:
        """Prior precision ``λ`` of the isotropic Gaussian prior."""
        return self._lam

    @prior_precision.setter
    def prior_precision(self, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise PosteriorError(f"prior_precision must be a positive finite number, got {value}")
        self._lam = float(value)
        self._cache.clear()

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
        if key not in self._cache:
            if "cpu64" not in self._cache:
                a_prec, b_prec = self.precision_factors()
                try:
                    a_inv = torch.cholesky_inverse(torch.linalg.cholesky(a_prec))
                    b_inv = torch.cholesky_inverse(torch.linalg.cholesky(b_prec))
                    a_inv, b_inv = 0.5 * (a_inv + a_inv.T), 0.5 * (b_inv + b_inv.T)
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
    def load(cls, path: str | Path) -> Posterior:
        """Read a directory written by :meth:`save` (or the path of its safetensors file)."""
        path = Path(path)
        directory = path.parent if path.is_file() else path
        weights, meta_path = directory / WEIGHTS_FILE, directory / META_FILE
        if not weights.is_file() or not meta_path.is_file():
            if (directory / REFERENCE_JSON).is_file():
                raise PosteriorError(
                    f"{directory} is in the reference layout; use Posterior.from_reference_dir"
                )
            raise PosteriorError(f"no {WEIGHTS_FILE} and {META_FILE} in {directory}")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(weights))
        except (ValueError, OSError, SafetensorError) as err:
            raise PosteriorError(f"cannot read posterior in {directory}: {err}") from err
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise PosteriorError(f"posterior format {meta['format_version']} is newer than this library")
        sides = {}
        for side in ("image", "text"):
            info = meta.get(side, {})
            try:
                a, b = tensors[f"{side}.A"], tensors[f"{side}.B"]
            except KeyError as err:
                raise PosteriorError(f"{weights} lacks tensor {err}") from err
            sides[side] = KronPosterior(
                a, b,
                pseudo_count=float(info.get("pseudo_count", 1.0)),
                prior_precision=float(info.get("prior_precision", 1.0)),
                num_pairs=info.get("num_pairs"),
            )
            for key, val in (("dim_in", a.shape[0]), ("dim_out", b.shape[0])):
                if key in info and info[key] != val:
                    raise PosteriorError(f"{side}.{key} is {info[key]} in {META_FILE} but {val} in tensors")
        extra = {k: v for k, v in meta.items() if k not in ("image", "text", "format_version")}
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
        prior_precision: tuple[float, float] | None = None,
    ) -> Posterior:
        """Read ``A_img_analytic.pt`` … ``prior_precision_analytic.json`` (BayesVLM's published layout).

        Each ``.pt`` must hold one bare tensor; it is read with ``torch.load(weights_only=True)`` on the
        CPU, so no code in the file is ever run, and anything but a plain square tensor is refused.
        ``pseudo_count``/``prior_precision`` (image, text) override the JSON values. Note that the
        published λ come from a marginal likelihood with a wrong log-determinant (method.md §2.5).
        """
        directory = Path(directory)
        js_path = directory / REFERENCE_JSON
        if not js_path.is_file():
            raise PosteriorError(f"{directory} has no {REFERENCE_JSON}")
        try:
            hyper = json.loads(js_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PosteriorError(f"{js_path} is not valid JSON: {err}") from err
        factors = {key: _load_reference_tensor(directory / name) for key, name in REFERENCE_FILES.items()}
        sides = {}
        for side, suffix in (("image", "img"), ("text", "txt")):
            try:
                lam = float(hyper[f"lambda_{suffix}"])
                n = float(hyper.get(f"n_{suffix}", 1.0))
            except (KeyError, TypeError, ValueError) as err:
                raise PosteriorError(f"{js_path} lacks a valid lambda_{suffix}") from err
            if prior_precision is not None:
                lam = float(prior_precision[0 if side == "image" else 1])
            sides[side] = KronPosterior(
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


def _load_reference_tensor(path: Path) -> torch.Tensor:
    """Load one bare tensor saved with ``torch.save``; refuse anything else without executing it."""
    if not path.is_file():
        raise PosteriorError(f"missing reference factor {path}")
    if not zipfile.is_zipfile(path):
        raise PosteriorError(f"{path} is not a torch zip archive; refusing to unpickle it")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, ValueError, EOFError) as err:
        raise PosteriorError(
            f"refusing {path}: it is not a plain tensor file (weights-only load failed: {err})"
        ) from err
    if not isinstance(obj, torch.Tensor):
        raise PosteriorError(f"{path} holds a {type(obj).__name__}, not a bare tensor")
    if obj.is_complex() or not obj.is_floating_point():
        raise PosteriorError(f"{path} holds a {obj.dtype} tensor; expected floating point")
    return _as_factor(obj, path.name)
