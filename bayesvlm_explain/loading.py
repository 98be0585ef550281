"""Safe loading of open_clip models: no code from a model's own files, no unpickling of its weights.

A model's files are data, never code. Two routes would turn them into code:

* ``trust_remote_code`` in its ``open_clip_config.json`` (e.g. ``text_cfg.tokenizer_kwargs``): open_clip
  hands it to the Hugging Face loaders, which then import the Python module that ``auto_map`` names.
  Such a config is refused (:class:`ModelFileError`) unless the caller opts in with
  ``trust_remote_code=True``; the tokenizer always receives the caller's flag explicitly, so a config
  can neither switch it on nor leave it unset (unset lets ``transformers`` ask on stdin). A Hugging Face
  text tower's ``config.json`` that names code (``auto_map``) is refused the same way, since open_clip
  passes no flag there.
* Pickled weights: a ``.bin``/``.pt``/``.pth`` checkpoint is first read here with
  ``torch.load(weights_only=True)``; anything that load refuses is reported as a :class:`ModelFileError`
  naming the file. (open_clip retries a failed load *without* ``weights_only`` when the error is a
  ``TypeError``, which a crafted file can trigger, so the file must be proven loadable before open_clip
  sees it.) ``.safetensors`` files need no check beyond a readable header.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .inputs import InputError

CONFIG_FILE = "open_clip_config.json"
CODE_FLAG = "trust_remote_code"
CODE_MAP = "auto_map"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


class ModelFileError(InputError):
    """A model whose files cannot be loaded safely (code-loading options, unsafe or unreadable weights)."""


def code_loading_options(config: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every option in ``config`` (nested dicts/lists) that asks to load code.

    That is any truthy ``trust_remote_code`` and any ``auto_map`` (a mapping from classes to modules).
    """
    if isinstance(config, Mapping):
        for key, value in config.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key in (CODE_FLAG, CODE_MAP) and value:
                yield path
            else:
                yield from code_loading_options(value, path)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from code_loading_options(value, f"{prefix}[{i}]")


def check_config(config: Any, source: str, trust_remote_code: bool = False) -> None:
    """Refuse a model config (an ``open_clip_config.json`` or HF ``config.json`` as a dict) that would
    load code, unless the caller opted in. ``source`` names the file in the message."""
    if trust_remote_code:
        return
    found = list(code_loading_options(config))
    if found:
        raise ModelFileError(
            f"{source} asks to run code shipped with the model ({', '.join(found)}); refusing. "
            "Pass trust_remote_code=True to BayesVLM.from_pretrained only for a model whose code you trust"
        )


def _read_json(path: Path, name: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ModelFileError(f"cannot read {name} of the model: {err.__class__.__name__}") from err


def _hub_file(model_id: str, filename: str) -> Path:
    from open_clip.pretrained import download_pretrained_from_hf

    return Path(download_pretrained_from_hf(model_id, filename=filename))


def check_weights_file(path: str | Path) -> None:
    """Prove a checkpoint loadable without unpickling code: safetensors header, or a weights-only load."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
        elif path.suffix in PICKLE_SUFFIXES:
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001 - any failure means the file is refused, never retried unsafely
        raise ModelFileError(
            f"refusing the model weights {path.name}: not a safetensors file or a plain tensor checkpoint "
            f"(a weights-only load failed with {err.__class__.__name__}); convert it to .safetensors"
        ) from err


def _model_config(model_name: str, schema: str | None, ident: str) -> tuple[Any, str, Path | None]:
    """``(open_clip model_cfg, its source name, the local folder or None)`` for a model name."""
    import open_clip

    if schema == "local-dir":
        root = Path(ident)
        cfg_path = root / CONFIG_FILE
        if not cfg_path.is_file():
            raise ModelFileError(f"model folder {root.name!r} has no {CONFIG_FILE}")
        return _read_json(cfg_path, CONFIG_FILE), CONFIG_FILE, root
    if schema == "hf-hub":
        return _read_json(_hub_file(ident, CONFIG_FILE), CONFIG_FILE), f"{ident}/{CONFIG_FILE}", None
    return open_clip.get_model_config(model_name), f"open_clip config {model_name}", None


def _check_text_tower(text_cfg: Mapping[str, Any], trust_remote_code: bool) -> None:
    """An HF text tower (``text_cfg.hf_model_name``) and an HF tokenizer (``text_cfg.hf_tokenizer_name``), each a
    folder or hub id as transformers resolves it: their ``config.json`` / ``tokenizer_config.json`` may not
    name code (``auto_map``), which transformers would otherwise refuse with its own ``ValueError``."""
    if trust_remote_code:
        return
    for key, filename in (("hf_model_name", "config.json"), ("hf_tokenizer_name", "tokenizer_config.json")):
        name = text_cfg.get(key)
        if not name:
            continue
        try:
            cfg_path = Path(name, filename) if Path(name).is_dir() else _hub_file(str(name), filename)
        except (FileNotFoundError, RuntimeError):
            continue  # unreachable hub or no such file: open_clip cannot build the tower either and says so
        if cfg_path.is_file():
            check_config(_read_json(cfg_path, filename), f"text tower {name}/{filename}", False)


def load_open_clip(
    model_name: str, pretrained: str | None, device: torch.device, trust_remote_code: bool = False
) -> tuple[torch.nn.Module, Any, Any]:
    """``(model, tokenizer, preprocess)`` for an open_clip name, ``hf-hub:`` id or ``local-dir:`` folder,
    after refusing code-loading configs and unsafe weights (module doc)."""
    import open_clip
    from open_clip.factory import _find_checkpoint_in_dir, parse_model_name

    schema, ident = parse_model_name(model_name)
    full, source, root = _model_config(model_name, schema, ident)
    check_config(full, source, trust_remote_code)
    model_cfg = (full or {}).get("model_cfg", full) or {}
    text_cfg = model_cfg.get("text_cfg", {}) if isinstance(model_cfg, Mapping) else {}
    _check_text_tower(text_cfg, trust_remote_code)
    if root is not None:
        checkpoint = _find_checkpoint_in_dir(root)
    elif schema == "hf-hub":
        try:
            checkpoint = _hub_file(ident, "open_clip_pytorch_model.bin")
        except FileNotFoundError:
            checkpoint = None
    else:
        checkpoint = Path(pretrained) if pretrained and Path(pretrained).is_file() else None
    if checkpoint is not None:
        check_weights_file(checkpoint)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=device, weights_only=True
    )
    tok_kwargs = {CODE_FLAG: trust_remote_code} if text_cfg.get("hf_tokenizer_name") else {}
    return model, open_clip.get_tokenizer(model_name, **tok_kwargs), preprocess
