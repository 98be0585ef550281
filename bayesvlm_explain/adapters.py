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

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextvars import ContextVar
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


class HookedResidualProjection(Projection):
    """An ``nn.Linear`` inside a head that adds a deterministic residual after it (SigLIP's MAP head).

    The layer's input is recorded by a forward pre-hook registered once; it records only while the calling
    thread (its context) asks for it, so concurrent forwards elsewhere are untouched. The mean embedding is
    the tower's own output, which carries the residual without uncertainty (method.md §1).
    """

    def __init__(self, module: nn.Linear, name: str, forward: Callable[[torch.Tensor], torch.Tensor],
                 token: int | None = None) -> None:
        super().__init__(name)
        self.module, self._forward, self.token = module, forward, token
        self._capture: ContextVar[list[torch.Tensor] | None] = ContextVar(f"capture_{id(self)}", default=None)
        module.register_forward_pre_hook(self._record)

    def _record(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured = self._capture.get()
        if captured is not None:
            captured.append(args[0])

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def features(self, inputs: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> Features:
        if token_embeddings is not None:
            raise TypeError(f"{self.name} is an image-side layer; token_embeddings do not apply")
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


def _weight_getters(owner: nn.Module, attr: str, name: str
                    ) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor | None]]:
    """``(W [D, p], b)`` getters for ``owner.<attr>``: an ``nn.Linear``, or a [p, D] parameter used as ``x @ P``."""
    proj = getattr(owner, attr, None)
    if isinstance(proj, nn.Linear):
        return (lambda: getattr(owner, attr).weight), (lambda: getattr(owner, attr).bias)
    if isinstance(proj, nn.Parameter) and proj.ndim == 2:
        return (lambda: getattr(owner, attr).T), (lambda: None)
    raise UnsupportedModelError(
        f"{name} is {type(proj).__name__}; a Bayesian head needs a linear projection into the joint space"
    )


def _vit_pre(visual: nn.Module) -> Callable[..., torch.Tensor]:
    """Pooled ViT features before ``visual.proj`` (open_clip ``VisionTransformer.forward`` minus the proj)."""
    if not (hasattr(visual, "_embeds") and hasattr(visual, "_pool")):
        raise UnsupportedModelError("this open_clip VisionTransformer has no _embeds/_pool; open_clip >= 3.0 "
                                    "is required")

    def pre(x: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        if token_embeddings is not None:
            raise TypeError("visual.proj is an image-side layer; token_embeddings do not apply")
        pooled, _ = visual._pool(visual.transformer(visual._embeds(x)))
        return pooled

    return pre


def _clip_text_pre(model: nn.Module) -> Callable[..., torch.Tensor]:
    """Pooled text features before ``text_projection`` (``open_clip.CLIP.encode_text`` minus the proj)."""
    from open_clip.transformer import text_global_pool

    def pre(text: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        cast = model.transformer.get_cast_dtype()
        x = (model.token_embedding(text) if token_embeddings is None else token_embeddings).to(cast)
        x = x + model.positional_embedding.to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        return text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))

    return pre


def _text_transformer_pre(tower: nn.Module) -> Callable[..., torch.Tensor]:
    """Pooled features before the projection of an open_clip ``TextTransformer`` (no CLS embedding)."""
    from open_clip.transformer import text_global_pool

    def pre(text: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        cast = tower.transformer.get_cast_dtype()
        seq_len = text.shape[1]
        x = (tower.token_embedding(text) if token_embeddings is None else token_embeddings).to(cast)
        attn_mask = tower.attn_mask
        if tower.use_pad_mask:
            pad = tower._build_additive_mask(text, seq_len, x.dtype)
            attn_mask = pad if attn_mask is None else attn_mask[:seq_len, :seq_len].unsqueeze(0) + pad
        x = x + tower.positional_embedding[:seq_len].to(cast)
        x = tower.ln_final(tower.transformer(x, attn_mask=attn_mask))
        return text_global_pool(x, text, pool_type=tower.pool_type, eos_token_id=getattr(tower, "eos_id", None))

    return pre


def _hf_text_pre(tower: nn.Module) -> Callable[..., torch.Tensor]:
    """Pooled features before ``proj`` of an open_clip ``HFTextEncoder``."""

    def pre(text: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        mask = (text != tower.config.pad_token_id).long()
        if token_embeddings is None:
            out = tower.transformer(input_ids=text, attention_mask=mask)
        else:
            out = tower.transformer(inputs_embeds=token_embeddings, attention_mask=mask)
        return tower.pooler(out, mask)

    return pre


def _submodule_projection(owner: nn.Module, attr: str, name: str, pre: Callable[..., torch.Tensor]
                          ) -> SubmoduleProjection:
    get_w, get_b = _weight_getters(owner, attr, name)
    return SubmoduleProjection(name, pre, get_w, get_b)


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
        visual = getattr(model, "visual", None)
        if not hasattr(model, "encode_image") or not hasattr(model, "encode_text") or visual is None:
            raise UnsupportedModelError(f"{type(model).__name__} is not an open_clip CLIP-style model")
        if type(model).__name__ == "CoCa":
            raise UnsupportedModelError("CoCa models are not supported (their text tower has no single "
                                        "projection into the joint space)")
        # --- image tower
        if isinstance(visual, VisionTransformer):
            self.image = _submodule_projection(visual, "proj", "visual.proj", _vit_pre(visual))
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
            self.text = _submodule_projection(model, "text_projection", "text_projection", _clip_text_pre(model))
        elif isinstance(model, open_clip.CustomTextCLIP):
            text = model.text
            text_kind = type(text).__name__
            if isinstance(text, TextTransformer):
                if getattr(text, "cls_emb", None) is not None:
                    raise UnsupportedModelError("text towers with an appended CLS embedding are not supported")
                self.text = _submodule_projection(text, "text_projection", "text.text_projection",
                                                  _text_transformer_pre(text))
            elif text_kind == "HFTextEncoder":
                self.text = _submodule_projection(text, "proj", "text.proj", _hf_text_pre(text))
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
        return HookedResidualProjection(pool.mlp.fc2, "visual.trunk.attn_pool.mlp.fc2", model.encode_image, token=0)

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
