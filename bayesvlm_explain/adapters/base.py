"""Building blocks of the model adapters: features, the Bayesian projection, and what a family builds.

A family splits its tower at the last linear map into the joint space (method.md §1): for every input it
returns the activation entering that map (``f`` on the image side, ``g`` on the text side) and the mean
embedding. A layer with a bias is handled as a layer on ``[x; 1]``, so ``dim_in = p + 1``.

Nothing here imports open_clip: the families import it inside their builders, when a model is adapted.
"""

from __future__ import annotations

import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..options import Likelihood
from .tokenizers import TokenizerInfo, token_counts


class UnsupportedModelError(TypeError):
    """The model's architecture has no registered family with a Bayesian projection layer."""


@dataclass
class Features:
    """Per-input features of one tower.

    activations: [N, p] input of the projection (without the constant 1 of a bias).
    embeddings: [N, D] mean embedding, un-normalised, residual included.
    """

    activations: torch.Tensor
    embeddings: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Features:
        return Features(self.activations.to(device, dtype), self.embeddings.to(device, dtype))


class Projection(ABC):
    """The Bayesian linear map of one tower: ``y = W x (+ b)`` with ``W`` [D, p].

    ``features`` computes the layer's input by calling the tower's own submodules (or, for a layer buried
    inside a head, with a forward pre-hook that records only for the calling thread), so the model is
    never edited and other threads using it at the same time are unaffected.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    @abstractmethod
    def weight(self) -> torch.Tensor:
        """``W`` [D, p] (a view of the model's parameter, in the orientation ``y = W x``)."""

    @property
    def bias(self) -> torch.Tensor | None:
        """``b`` [D] or None."""
        return None

    @property
    def dim_in(self) -> int:
        """Input dimension of the Bayesian layer, counting the bias column."""
        return self.weight.shape[1] + (self.bias is not None)

    @property
    def dim_out(self) -> int:
        return self.weight.shape[0]

    def augment(self, activations: torch.Tensor) -> torch.Tensor:
        """``x̃``: the activations [N, p] with a column of ones appended when the layer has a bias."""
        if self.bias is None:
            return activations
        return torch.cat([activations, activations.new_ones(activations.shape[0], 1)], dim=1)

    def weight_with_bias(self) -> torch.Tensor:
        """``[W, b]`` [D, dim_in]: the MAP parameters the posterior is centred on."""
        w = self.weight
        return w if self.bias is None else torch.cat([w, self.bias[:, None]], dim=1)

    def project(self, activations: torch.Tensor) -> torch.Tensor:
        """``W x (+ b)`` [N, D] for activations [N, p], in the activations' dtype."""
        b = None if self.bias is None else self.bias.to(activations.dtype)
        return F.linear(activations, self.weight.to(activations.dtype), b)

    @abstractmethod
    def features(self, inputs: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> Features:
        """Run the tower on ``inputs`` and return activations and mean embeddings.

        ``token_embeddings`` [N, L, w] (text towers only) replace the token-embedding layer's output, so
        that attributions can differentiate with respect to them without hooking the shared model.
        """


class SubmoduleProjection(Projection):
    """A projection whose input ``pre(inputs, token_embeddings)`` is computed from the tower's submodules.

    ``get_weight`` returns ``W`` [D, p]; ``get_bias`` ``b`` [D] or None. They are read at call time, so a
    reassigned parameter is always the one used.
    """

    def __init__(self, name: str, pre: Callable[..., torch.Tensor], get_weight: Callable[[], torch.Tensor],
                 get_bias: Callable[[], torch.Tensor | None] = lambda: None) -> None:
        super().__init__(name)
        self._pre, self._get_weight, self._get_bias = pre, get_weight, get_bias

    @property
    def weight(self) -> torch.Tensor:
        return self._get_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self._get_bias()

    def features(self, inputs: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> Features:
        act = self._pre(inputs, token_embeddings)
        return Features(act, self.project(act))


# One recorder per hooked module, shared by every projection built on it: adapting a model again (a second
# BayesVLM, a lookup of its patch grid) adds no hook.
_RECORDERS: weakref.WeakKeyDictionary[nn.Module, ContextVar[list[torch.Tensor] | None]] = weakref.WeakKeyDictionary()
_RECORDERS_LOCK = threading.Lock()


def _recorder(module: nn.Module) -> ContextVar[list[torch.Tensor] | None]:
    """The context-local list that ``module``'s forward pre-hook appends its input to (hook added once)."""
    with _RECORDERS_LOCK:
        var = _RECORDERS.get(module)
        if var is None:
            var = _RECORDERS[module] = ContextVar(f"capture_{id(module)}", default=None)
            module.register_forward_pre_hook(_record_into(var))
        return var


def _record_into(var: ContextVar[list[torch.Tensor] | None]) -> Callable[..., None]:
    """A forward pre-hook appending the module's input to ``var``'s list when the calling context set one."""

    def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured = var.get()
        if captured is not None:
            captured.append(args[0])

    return record


class HookedResidualProjection(Projection):
    """An ``nn.Linear`` inside a head that adds a deterministic residual after it (SigLIP's MAP head).

    The layer's input is recorded by a forward pre-hook registered once per module; it records only while
    the calling thread (its context) asks for it, so concurrent forwards elsewhere are untouched. The mean
    embedding is the tower's own output, which carries the residual without uncertainty (method.md §1).
    """

    def __init__(self, module: nn.Linear, name: str, forward: Callable[[torch.Tensor], torch.Tensor],
                 token: int | None = None) -> None:
        super().__init__(name)
        self.module, self._forward, self.token = module, forward, token
        self._capture = _recorder(module)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def features(self, inputs: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> Features:
        if token_embeddings is not None:
            image_only(self.name)
        captured: list[torch.Tensor] = []
        reset = self._capture.set(captured)
        try:
            out = self._forward(inputs)
        finally:
            self._capture.reset(reset)
        if len(captured) != 1:
            raise RuntimeError(f"{self.name} ran {len(captured)} times in one forward pass; expected once")
        act = captured[0]
        if self.token is not None and act.ndim == 3:
            act = act[:, self.token]
        if act.ndim != 2:
            raise RuntimeError(f"{self.name} input has shape {tuple(act.shape)}; expected [N, p]")
        return Features(act, out)


def linear_projection(owner: nn.Module, attr: str, name: str, pre: Callable[..., torch.Tensor]
                      ) -> SubmoduleProjection:
    """A :class:`SubmoduleProjection` onto ``owner.<attr>``: an ``nn.Linear`` (``W``, ``b``), or a [p, D]
    parameter used as ``x @ P`` (``W = P.T``, no bias). ``name`` names the layer in messages."""
    proj = getattr(owner, attr, None)
    if isinstance(proj, nn.Linear):
        return SubmoduleProjection(name, pre, lambda: getattr(owner, attr).weight, lambda: getattr(owner, attr).bias)
    if isinstance(proj, nn.Parameter) and proj.ndim == 2:
        return SubmoduleProjection(name, pre, lambda: getattr(owner, attr).T)
    raise UnsupportedModelError(
        f"{name} is {type(proj).__name__}; a Bayesian head needs a linear projection into the joint space"
    )


def image_only(name: str) -> None:
    """Raise: ``token_embeddings`` were passed to the image-side layer ``name``."""
    raise TypeError(f"{name} is an image-side layer; token_embeddings do not apply")


def pair(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """``(h, w)`` from ``s`` or ``(h, w)``."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


@dataclass
class ImageTower:
    """What an image-tower family builds from a model.

    projection: the Bayesian layer and its input activations.
    module: the tower (its parameters are the image side: dtype, and everything else is the text side).
    image_size: the input ``(H, W)`` in pixels, or None when the tower accepts any size.
    patch_size: ``(ph, pw)`` pixels per cell of the tower's spatial grid (ViT patch, ResNet output
        stride): the default cell of patch sums and occlusion windows; None when unknown.
    """

    projection: Projection
    module: nn.Module
    image_size: tuple[int, int] | None
    patch_size: tuple[int, int] | None


@dataclass
class TextTower:
    """What a text-tower family builds from a model.

    projection: the Bayesian layer; its ``features(tokens, token_embeddings=…)`` accepts replacement
        token embeddings [N, L, w].
    token_embedding: the layer mapping token ids [N, L] to the embeddings [N, L, w] that
        ``token_embeddings`` replace (token attributions integrate in its output space).
    context_length: the tower's token context, used when the tokenizer does not state one.
    tokenizer_info: pad / special ids and token strings of a tokenizer for this tower.
    count_tokens: ``(tokenizer, prompts) -> untruncated token counts`` (overflow warnings).
    """

    projection: Projection
    token_embedding: nn.Module
    context_length: int | None
    tokenizer_info: Callable[[Any], TokenizerInfo] = TokenizerInfo
    count_tokens: Callable[[Any, list[str]], list[int]] = token_counts


class ModelAdapter(Protocol):
    """Everything the library needs from a CLIP-style model (one per model; see :func:`adapter_for`).

    ``image`` / ``text``: the two Bayesian projections. ``logit_scale`` ``τ``, ``logit_bias`` ``b``:
    logits are ``τ cos + b``. ``likelihood``: ``"infonce"`` or ``"sigmoid"``. ``architecture``: a short
    description (stored with fitted posteriors and caches).
    """

    model: nn.Module
    architecture: str

    @property
    def image(self) -> Projection: ...

    @property
    def text(self) -> Projection: ...

    @property
    def logit_scale(self) -> float: ...

    @property
    def logit_bias(self) -> float: ...

    @property
    def likelihood(self) -> Likelihood: ...

    @property
    def image_size(self) -> tuple[int, int] | None:
        """Input ``(H, W)`` in pixels, or None."""

    @property
    def patch_size(self) -> tuple[int, int] | None:
        """Pixels per cell of the image tower's spatial grid (attribution patches), or None."""

    @property
    def image_dtype(self) -> torch.dtype:
        """The dtype images are cast to before the image tower."""

    @property
    def token_embedding(self) -> nn.Module:
        """The text tower's token-embedding layer (ids [N, L] -> [N, L, w])."""

    def context_length(self, tokenizer: Any) -> int:
        """Tokens per prompt after tokenising with ``tokenizer``."""

    def token_counts(self, tokenizer: Any, prompts: list[str]) -> list[int]:
        """Untruncated token counts of ``prompts`` (start/end tokens included)."""

    def tokenizer_info(self, tokenizer: Any) -> TokenizerInfo:
        """Pad / special ids and token strings of ``tokenizer``."""

    def text_fingerprint(self) -> tuple[Hashable, ...]:
        """A cheap key that changes whenever a text-side parameter is edited, replaced or reloaded."""
