"""Model adapters: split each open_clip tower at its last linear map into the joint space.

For every input the adapter returns the activation entering the Bayesian projection (``f`` on the image
side, ``g`` on the text side) and the mean embedding. Supported (method.md §1):

* ``open_clip.CLIP`` / ``CustomTextCLIP`` with a ``VisionTransformer`` image tower: the projection is
  ``visual.proj`` [p, D] applied as ``f @ proj``, so ``W_img = proj.T``.
* SigLIP image towers (timm trunk with a MAP attention-pool head): the projection is
  ``trunk.attn_pool.mlp.fc2`` with bias; the attention output ``r`` is a deterministic residual added to
  the mean (``u = r + fc2(f)``).
* Text towers: ``TextTransformer`` (inside ``CLIP`` or ``CustomTextCLIP``) with ``text_projection`` as a
  [p_t, D] parameter or an ``nn.Linear`` (SigLIP: with bias), and Hugging Face text towers
  (``HFTextEncoder``) with a linear ``proj``.

A layer with a bias is handled as a layer on ``[x; 1]``, so ``dim_in = p + 1``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedModelError(TypeError):
    """The model's architecture has no supported Bayesian projection layer."""


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
    """The Bayesian linear map of one tower: ``y = W x (+ b)`` with ``W`` [D, p]."""

    def __init__(self, name: str, forward: Callable[[torch.Tensor], torch.Tensor], lock: threading.RLock):
        self.name = name
        self._forward = forward
        self._lock = lock

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

    @abstractmethod
    def features(self, inputs: torch.Tensor) -> Features:
        """Run the tower on ``inputs`` and return activations and mean embeddings."""


class ParameterProjection(Projection):
    """A projection stored as a [p, D] parameter ``owner.<attr>`` and applied as ``x @ P``."""

    def __init__(self, owner: nn.Module, attr: str, name: str,
                 forward: Callable[[torch.Tensor], torch.Tensor], lock: threading.RLock):
        super().__init__(name, forward, lock)
        self._owner, self._attr = owner, attr

    @property
    def _param(self) -> torch.Tensor:
        return getattr(self._owner, self._attr)

    @property
    def weight(self) -> torch.Tensor:
        return self._param.T

    @contextmanager
    def _detached(self) -> Iterator[torch.Tensor]:
        """Temporarily remove the projection so the tower returns its input (thread-safe)."""
        with self._lock:
            param = self._param
            setattr(self._owner, self._attr, None)
            try:
                yield param
            finally:
                setattr(self._owner, self._attr, param)

    def features(self, inputs: torch.Tensor) -> Features:
        with self._detached() as param:
            act = self._forward(inputs)
        return Features(act, act @ param.to(act.dtype))


class LinearProjection(Projection):
    """A projection that is an ``nn.Linear``; its input is captured with a forward pre-hook.

    With ``residual=True`` the tower may add a deterministic offset after the layer (SigLIP's MAP head):
    the mean embedding is the tower's output, so the offset is carried in the mean without uncertainty.
    """

    def __init__(self, module: nn.Linear, name: str, forward: Callable[[torch.Tensor], torch.Tensor],
                 lock: threading.RLock, *, residual: bool = False, token: int | None = None):
        super().__init__(name, forward, lock)
        self.module, self.residual, self.token = module, residual, token

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def features(self, inputs: torch.Tensor) -> Features:
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured.append(args[0])

        with self._lock:
            handle = self.module.register_forward_pre_hook(hook)
            try:
                out = self._forward(inputs)
            finally:
                handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"{self.name} ran {len(captured)} times in one forward pass; expected once")
        act = captured[0]
        if self.token is not None and act.ndim == 3:
            act = act[:, self.token]
        if act.ndim != 2:
            raise RuntimeError(f"{self.name} input has shape {tuple(act.shape)}; expected [N, p]")
        if not self.residual:
            out = F.linear(act, self.weight.to(act.dtype), None if self.bias is None else self.bias.to(act.dtype))
        return Features(act, out)


def _make_projection(owner: nn.Module, attr: str, name: str, forward: Callable, lock: threading.RLock,
                     **kw) -> Projection:
    proj = getattr(owner, attr, None)
    if isinstance(proj, nn.Linear):
        return LinearProjection(proj, name, forward, lock, **kw)
    if isinstance(proj, nn.Parameter) and proj.ndim == 2:
        return ParameterProjection(owner, attr, name, forward, lock)
    raise UnsupportedModelError(
        f"{name} is {type(proj).__name__}; a Bayesian head needs a linear projection into the joint space"
    )


class OpenCLIPAdapter:
    """Splits an open_clip model into feature extractors and the two Bayesian projections.

    Attributes:
        image, text: :class:`Projection` of each tower.
        architecture: a short description such as ``"CLIP[VisionTransformer+TextTransformer]"``.
    """

    def __init__(self, model: nn.Module):
        import open_clip
        from open_clip.transformer import TextTransformer, VisionTransformer

        self.model = model
        self._lock = threading.RLock()
        visual = getattr(model, "visual", None)
        if not hasattr(model, "encode_image") or not hasattr(model, "encode_text") or visual is None:
            raise UnsupportedModelError(f"{type(model).__name__} is not an open_clip CLIP-style model")
        if type(model).__name__ == "CoCa":
            raise UnsupportedModelError("CoCa models are not supported (their text tower has no single "
                                        "projection into the joint space)")
        # --- image tower
        if isinstance(visual, VisionTransformer):
            self.image = _make_projection(visual, "proj", "visual.proj", model.encode_image, self._lock)
        elif type(visual).__name__ == "TimmModel":
            self.image = self._siglip_image(visual, model)
        else:
            raise UnsupportedModelError(
                f"image tower {type(visual).__name__} is not supported (supported: open_clip "
                "VisionTransformer, timm ViT with a MAP attention-pool head as in SigLIP)"
            )
        # --- text tower
        if isinstance(model, open_clip.CLIP):
            text_kind = "TextTransformer"
            self.text = _make_projection(model, "text_projection", "text_projection", model.encode_text,
                                         self._lock)
        elif isinstance(model, open_clip.CustomTextCLIP):
            text = model.text
            text_kind = type(text).__name__
            if isinstance(text, TextTransformer):
                if getattr(text, "cls_emb", None) is not None:
                    raise UnsupportedModelError("text towers with an appended CLS embedding are not supported")
                self.text = _make_projection(text, "text_projection", "text.text_projection",
                                             model.encode_text, self._lock)
            elif text_kind == "HFTextEncoder":
                self.text = _make_projection(text, "proj", "text.proj", model.encode_text, self._lock)
            else:
                raise UnsupportedModelError(f"text tower {text_kind} is not supported")
        else:
            raise UnsupportedModelError(f"{type(model).__name__} is not a supported open_clip model class")
        if self.image.dim_out != self.text.dim_out:
            raise UnsupportedModelError(
                f"image and text projections map to {self.image.dim_out} and {self.text.dim_out} dims"
            )
        self.architecture = f"{type(model).__name__}[{type(visual).__name__}+{text_kind}]"

    def _siglip_image(self, visual: nn.Module, model: nn.Module) -> Projection:
        from timm.layers import AttentionPoolLatent

        trunk = visual.trunk
        pool = getattr(trunk, "attn_pool", None)
        tail_ok = (isinstance(getattr(trunk, "fc_norm", nn.Identity()), nn.Identity)
                   and isinstance(getattr(trunk, "head", nn.Identity()), nn.Identity)
                   and all(isinstance(m, nn.Identity | nn.Dropout) for m in visual.head.children()))
        if not isinstance(pool, AttentionPoolLatent) or pool.mlp is None or not tail_ok:
            raise UnsupportedModelError(
                f"timm image tower {type(trunk).__name__} is supported only with a MAP attention-pool "
                "head (SigLIP) and no projection after it"
            )
        if pool.latent_len != 1:
            raise UnsupportedModelError("MAP heads with more than one latent token are not supported")
        return LinearProjection(pool.mlp.fc2, "visual.trunk.attn_pool.mlp.fc2", model.encode_image,
                                self._lock, residual=True, token=0)

    @property
    def logit_scale(self) -> float:
        """``τ = exp(logit_scale)``."""
        return float(self.model.logit_scale.detach().exp().reshape(-1)[0])

    @property
    def logit_bias(self) -> float:
        """The logit bias (SigLIP), else 0."""
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach().reshape(-1)[0])

    @property
    def likelihood(self) -> str:
        """``"sigmoid"`` for models with a logit bias (SigLIP), else ``"infonce"``."""
        return "sigmoid" if getattr(self.model, "logit_bias", None) is not None else "infonce"
