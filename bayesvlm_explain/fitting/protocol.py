"""What fitting needs of a model: the adapters' seam, not the :class:`~bayesvlm_explain.BayesVLM` facade
(which calls fitting, so fitting names only this protocol)."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from ..adapters import ModelAdapter


class FittableModel(Protocol):
    """A model fitting can encode pairs with (:class:`~bayesvlm_explain.BayesVLM` is one)."""

    name: str
    device: torch.device

    @property
    def adapter(self) -> ModelAdapter:
        """The model's two Bayesian projections and their inputs."""
        ...

    @property
    def model(self) -> nn.Module:
        """The underlying (open_clip) model."""
        ...

    @property
    def preprocess(self) -> Any:
        """PIL image -> [3, H, W] tensor."""
        ...

    @property
    def tokenizer(self) -> Any:
        """list of str -> [C, context_length] token ids."""
        ...

    @property
    def context_length(self) -> int:
        """Tokens per prompt."""
        ...
