"""Validation of user inputs: images (PIL, files, tensors) and prompts, with clear errors.

Messages name a file by its base name only (never a server path) and never quote library internals,
so they can be shown to the person who sent the input.
"""

from __future__ import annotations

import io
import math
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs well before PIL's own hard limit
MAX_PROMPT_CHARS = 2_000
INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
"""Unicode categories that show nothing: control, format and separator characters."""


class InputError(ValueError):
    """An input that cannot be used; the message says which one and why."""


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Open an image from a path, raw bytes or a PIL image and return it as RGB, upright.

    The EXIF orientation tag, if any, is applied for every mode and format (``ImageOps.exif_transpose``).
    With ``min_side`` (pixels), a file whose shorter side is at least twice that is downscaled while it is
    decoded, by the largest whole factor that keeps the shorter side >= ``min_side``: JPEGs decode at a
    reduced DCT scale (``Image.draft``), other formats are box-averaged (``Image.reduce``) before the RGB
    conversion, so a 6300x6300 1-bit PNG never becomes a 119 MB RGB array.
    Raises :class:`InputError` for missing, corrupt, non-image or over-large files (the pixel count is
    checked from the header, before decoding).
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            fp: Any = io.BytesIO(source) if isinstance(source, bytes | bytearray) else Path(source)
            img = Image.open(fp)
        except FileNotFoundError as err:
            raise InputError(f"image file not found: {name}") from err
        except Image.DecompressionBombError as err:
            raise InputError(f"image {name} exceeds the limit of {max_pixels} pixels") from err
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"not a readable image: {name}") from err
    w, h = img.size
    if w * h > max_pixels or w <= 0 or h <= 0:
        raise InputError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if min_side and min(w, h) >= 2 * min_side and not isinstance(source, Image.Image):
                img = _reduced(img, min_side)
            return ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, Image.DecompressionBombWarning) as err:
        raise InputError(f"image {name} could not be decoded ({err.__class__.__name__})") from err


def _reduced(img: Image.Image, min_side: int) -> Image.Image:
    """``img`` (opened, not decoded) decoded at a whole-factor smaller size, shorter side >= ``min_side``; the
    EXIF orientation is carried over."""
    orientation = img.getexif().get(0x0112)
    w, h = img.size
    if img.format == "JPEG":
        factor = min(w, h) // min_side
        img.draft(img.mode, (w // factor, h // factor))  # DCT scaling: 1/2, 1/4 or 1/8 at most
    if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode in ("PA", "RGBa") else
                          "L" if img.mode == "1" else "RGB")
    factor = min(img.size) // min_side
    small = img.reduce(factor) if factor >= 2 else img
    if orientation:
        small.getexif()[0x0112] = orientation
    return small


def _describe(source: Any) -> str:
    """How an image source is named in messages: a file's base name, a size for bytes."""
    if isinstance(source, bytes | bytearray):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return Path(source).name or "<unnamed>"


def check_number(value: Any, name: str, low: float, high: float, integer: bool = False) -> float:
    """``value`` as a float (an ``int`` with ``integer``) if it is a real number in ``[low, high]`` (and whole
    with ``integer``); :class:`InputError` naming ``name`` for NaN, infinities, strings, booleans and values
    out of range (what a server must check: a client can send any JSON number, or none)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise InputError(f"{name} must be a finite number, got {str(value)[:40]!r}")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    if integer:
        if value != int(value):
            raise InputError(f"{name} must be a whole number, got {value:g}")
        return int(value)
    return float(value)


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """Return the prompts as a list; refuse an empty list, non-strings and blank or huge prompts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise InputError("prompts must be a non-empty list of strings")
    out = []
    for i, p in enumerate(prompts, start=1):  # counted from 1, like the studio's lines
        if not isinstance(p, str):
            raise InputError(f"prompt {i} is a {type(p).__name__}, not a string")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(f"prompt {i} is not valid text (an unpaired surrogate character at position "
                             f"{err.start}); send it as UTF-8") from err
        if all(c.isspace() or unicodedata.category(c) in INVISIBLE for c in p):
            raise InputError(f"prompt {i} is empty (only spaces or control characters)")
        if len(p) > MAX_PROMPT_CHARS:
            raise InputError(f"prompt {i} has {len(p)} characters; the limit is {MAX_PROMPT_CHARS}")
        out.append(p)
    return out


def image_batch(images: Any, preprocess: Any, image_size: tuple[int, int] | None) -> torch.Tensor:
    """Turn PIL images, paths, bytes or a [N, 3, H, W] / [3, H, W] tensor into a float batch."""
    if isinstance(images, torch.Tensor):
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"an image tensor must be [N, 3, H, W] (preprocessed), got {tuple(images.shape)}")
        if not x.is_floating_point():
            raise InputError(f"an image tensor must be floating point (preprocessed), got {x.dtype}")
        if x.shape[0] == 0:
            raise InputError("the image tensor holds no images")
        if image_size is not None and tuple(x.shape[-2:]) != tuple(image_size):
            raise InputError(f"image tensor is {tuple(x.shape[-2:])} pixels; the model expects {image_size}"
                             " (pass PIL images to have them preprocessed)")
        if not torch.isfinite(x).all():
            raise InputError("the image tensor has non-finite values")
        return x
    if isinstance(images, Image.Image | str | Path | bytes):
        images = [images]
    if not isinstance(images, Sequence) or len(images) == 0:
        raise InputError("images must be a non-empty list of PIL images (or paths), or a [N, 3, H, W] tensor")
    batch = []
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image | str | Path | bytes):
            raise InputError(f"images[{i}] is a {type(im).__name__}; expected a PIL image, a path or bytes")
        try:
            batch.append(preprocess(load_image(im)))
        except InputError as err:
            raise InputError(f"images[{i}]: {err}") from err
    return torch.stack(batch)
