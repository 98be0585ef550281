"""Explain the uncertainty of a :class:`~bayesvlm_explain.BayesVLM`: decompositions, pixel and token
attributions (captum), and matplotlib figures (:mod:`bayesvlm_explain.explain.figures`).

>>> from bayesvlm_explain.explain import UncertaintyAttribution, TokenAttribution, decompose_uncertainty
>>> dec = decompose_uncertainty(vlm.predict(images, prompts))
>>> res = UncertaintyAttribution(vlm, target="epistemic").attribute(images, prompts)
>>> tok = TokenAttribution(vlm, target="text_variance").attribute(images[0], prompts[0])
"""

from .attribution import AttributionResult, UncertaintyAttribution, model_patch_size, patch_sum
from .decomposition import UncertaintyDecomposition, decompose_uncertainty
from .targets import entropy_terms, probit_entropy
from .tokens import TokenAttribution, TokenAttributionResult, token_embedding_layer

__all__ = [
    "AttributionResult",
    "TokenAttribution",
    "TokenAttributionResult",
    "UncertaintyAttribution",
    "UncertaintyDecomposition",
    "decompose_uncertainty",
    "entropy_terms",
    "model_patch_size",
    "patch_sum",
    "probit_entropy",
    "token_embedding_layer",
]
