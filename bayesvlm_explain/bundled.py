"""The project's bundled offline CLIP-style model (trained here on openly licensed emoji artwork).

The model is package data in ``bayesvlm_explain/pretrained/bundled/`` (overridable with
``$BAYESVLM_BUNDLED_DIR``), an open_clip ``local-dir`` layout: ``open_clip_config.json`` (``model_cfg`` +
``preprocess_cfg``), ``open_clip_model.safetensors``, a WordPiece tokenizer in ``tokenizer/`` (its path in
``text_cfg.hf_tokenizer_name`` is relative to the model directory) and the fitted posterior in
``posterior/``.

Architecture: plain ``open_clip.CLIP`` with open_clip's ``VisionTransformer`` (``visual.proj`` is a
``[vision_width, D]`` Parameter) and built-in ``TextTransformer`` (``text_projection`` a ``[text_width, D]``
Parameter, ``pool_type="eos"`` so the ``[SEP]`` token feature enters the projection). The model is built
from the config dict directly; nothing is registered in open_clip's global model-config table. Recipe and
metrics are in ``training.json``; artwork credits in ``ATTRIBUTION.md`` beside the weights.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from .pretrained.registry import BUNDLED_DIR, bundled_dir

__all__ = [
    "BUNDLED_DIR",
    "build_bundled_model",
    "bundled_config",
    "bundled_dir",
    "bundled_tokenizer",
    "load_bundled",
]

def bundled_config(model_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``open_clip_config.json`` with ``text_cfg.hf_tokenizer_name`` made absolute."""
    root = Path(model_dir) if model_dir is not None else bundled_dir()
    path = root / "open_clip_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no bundled model at {root} (missing open_clip_config.json); "
                                "unset BAYESVLM_BUNDLED_DIR or point it at a model folder")
    cfg = copy.deepcopy(json.loads(path.read_text(encoding="utf-8")))
    text_cfg = cfg["model_cfg"]["text_cfg"]
    tok = Path(text_cfg.get("hf_tokenizer_name") or "tokenizer")
    text_cfg["hf_tokenizer_name"] = str(tok if tok.is_absolute() else (root / tok).resolve())
    return cfg


def build_bundled_model(model_cfg: dict[str, Any]):
    """A randomly initialised ``open_clip.CLIP`` from a ``model_cfg`` dict (no global registration)."""
    import open_clip

    cfg = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    return open_clip.CLIP(**cfg)


def bundled_tokenizer(text_cfg: dict[str, Any]):
    """open_clip ``HFTokenizer`` for ``text_cfg`` (``hf_tokenizer_name`` an absolute tokenizer folder):
    ``tokenizer(list_of_str) -> LongTensor[N, context_length]``."""
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=text_cfg["context_length"],
                       tokenizer_mode=text_cfg.get("tokenizer_mode"), **text_cfg.get("tokenizer_kwargs", {}))


def load_bundled(device: str | torch.device | None = None):
    """Load the bundled model offline.

    Returns:
        ``(model, tokenizer, preprocess)``: an eval-mode ``open_clip.CLIP`` on ``device`` (default CPU),
        an open_clip ``HFTokenizer`` (``tokenizer(list_of_str) -> LongTensor[N, context_length]``) and the
        eval transform (``PIL.Image -> FloatTensor[3, S, S]``, S = image size, 64 px).
    """
    import open_clip
    from safetensors.torch import load_file

    root = bundled_dir()
    cfg = bundled_config(root)
    model = build_bundled_model(cfg["model_cfg"])
    state = load_file(str(root / "open_clip_model.safetensors"), device="cpu")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model = model.to(device or "cpu").eval()
    tokenizer = bundled_tokenizer(cfg["model_cfg"]["text_cfg"])
    pp = cfg.get("preprocess_cfg", {})
    preprocess = open_clip.image_transform(
        pp.get("size", model.visual.image_size),
        is_train=False,
        mean=pp.get("mean"),
        std=pp.get("std"),
        resize_mode=pp.get("resize_mode"),
        interpolation=pp.get("interpolation"),
        fill_color=pp.get("fill_color", 0),
    )
    return model, tokenizer, preprocess
