"""Uploaded files checked from their first bytes, before any image library opens them.

The studio's upload components hand over files, never decoded images: :func:`check_upload` reads the
format and the pixel dimensions from the header (JPEG, PNG, WebP, GIF, BMP), refuses anything else or
anything over the pixel cap, and only then lets PIL decode it. Messages name the file by its base name
only (never a server path).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ..data.folders import IMAGE_SUFFIXES
from ..inputs import MAX_IMAGE_PIXELS, InputError, load_image

FORMATS = ("JPEG", "PNG", "WebP", "GIF", "BMP")
EXTENSIONS = list(IMAGE_SUFFIXES)  # one definition: bayesvlm_explain.data.folders
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # the server refuses larger uploads (Blocks.launch max_file_size)
MAX_REQUEST_PIXELS = 300_000_000  # declared pixels of all images of one batch or one zip, together
DECODE_MIN_SIDE = 448  # uploads are decoded downscaled to this shorter side (>= 2x a ViT-B's 224 input)
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_SCAN_LIMIT = 4 * 1024 * 1024  # a frame header must appear within the first bytes


def display_name(path: str | os.PathLike[str]) -> str:
    """The file's base name (what the user uploaded), safe to show."""
    return Path(path).name or "upload"


def image_header(fp: BinaryIO) -> tuple[str, int, int]:
    """``(format, width, height)`` read from the header of an open binary file; :class:`InputError` if the
    bytes are none of :data:`FORMATS` or the header is cut short."""
    head = fp.read(32)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return "PNG", w, h
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return "GIF", w, h
    if head[:2] == b"BM" and len(head) >= 26:
        (dib,) = struct.unpack("<I", head[14:18])
        if dib == 12:
            w, h = struct.unpack("<hh", head[18:22])
        else:
            w, h = struct.unpack("<ii", head[18:26])
        return "BMP", w, abs(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ("WebP", *_webp_size(head + fp.read(8)))
    if head[:2] == b"\xff\xd8":
        fp.seek(2)
        return ("JPEG", *_jpeg_size(fp))
    raise InputError("not a JPEG, PNG, WebP, GIF or BMP image")


def _webp_size(head: bytes) -> tuple[int, int]:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    raise InputError("a WebP file without a readable frame header")


def _jpeg_size(fp: BinaryIO) -> tuple[int, int]:
    while fp.tell() < _JPEG_SCAN_LIMIT:
        byte = fp.read(1)
        if not byte:
            break
        if byte != b"\xff":
            continue
        marker = fp.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fp.read(1)
        if not marker:
            break
        code = marker[0]
        if code == 0xD8 or code == 0x01 or 0xD0 <= code <= 0xD7:  # no length field
            continue
        raw = fp.read(2)
        if len(raw) < 2:
            break
        (length,) = struct.unpack(">H", raw)
        if code in _JPEG_SOF:
            frame = fp.read(5)
            if len(frame) < 5:
                break
            h, w = struct.unpack(">HH", frame[1:5])
            return w, h
        if code == 0xDA or length < 2:  # scan data before any frame header
            break
        fp.seek(length - 2, os.SEEK_CUR)
    raise InputError("a JPEG file without a readable frame header")


def check_upload(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS,
                 max_bytes: int = MAX_UPLOAD_BYTES) -> tuple[str, int, int]:
    """``(format, width, height)`` of an uploaded file, checked without decoding it.

    Raises :class:`InputError` naming the file (base name only) for a missing, empty, over-large, non-image
    or over-sized (pixels) upload.
    """
    name = display_name(path)
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise InputError(f"{name}: the file is empty")
        if size > max_bytes:
            raise InputError(f"{name}: {size / 2**20:.1f} MB; the studio takes files up to {max_bytes // 2**20} MB")
        with open(path, "rb") as fp:
            fmt, w, h = image_header(fp)
    except InputError as err:
        raise InputError(str(err) if str(err).startswith(name) else f"{name}: {err}") from None
    except (OSError, struct.error, IndexError):
        raise InputError(f"{name}: not a readable JPEG, PNG, WebP, GIF or BMP image") from None
    if w <= 0 or h <= 0:
        raise InputError(f"{name}: the header declares {w}x{h} pixels")
    if w * h > max_pixels:
        raise InputError(f"{name}: {w}x{h} pixels exceeds the studio's limit of {max_pixels:,} pixels")
    return fmt, w, h


def check_pixel_budget(pixels: int, what: str, budget: int = MAX_REQUEST_PIXELS) -> None:
    """Refuse a request whose images declare more than ``budget`` pixels together (:class:`InputError`
    naming ``what``: the zip or "the batch")."""
    if pixels > budget:
        raise InputError(f"{what}: the images declare {pixels / 1e6:,.0f} million pixels together; one request "
                         f"takes at most {budget / 1e6:,.0f} million")


def open_upload(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The upload as an RGB PIL image, after :func:`check_upload`, decoded downscaled to a shorter side of
    :data:`DECODE_MIN_SIDE` or more; errors name the file, never its path."""
    fmt, _, _ = check_upload(path, max_pixels)
    try:
        img = load_image(Path(path), max_pixels=max_pixels, min_side=DECODE_MIN_SIDE)
    except InputError:
        raise InputError(f"{display_name(path)}: could not be decoded as a {fmt} image") from None
    return img


def discard(path: str | os.PathLike[str] | None) -> None:
    """Delete a refused upload now (accepted ones are removed by the server's cache cleanup)."""
    if path:
        Path(path).unlink(missing_ok=True)
