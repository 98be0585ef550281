"""Image files and class folders on disk: the one definition used by ``evaluate``, active learning and the
studio's zip uploads (Calibrate, Select).

* **Image files** are the files whose suffix (any case) is one of :data:`IMAGE_SUFFIXES`: JPEG, PNG, WebP,
  GIF and BMP, the formats the studio can check from their header before decoding. TIFF is not accepted
  anywhere (convert it first), so a folder is read the same way by the command line and the studio.
* **Hidden entries** (a name starting with ``.``) and macOS archive folders (``__MACOSX``) are ignored.
* **Class names** are decoded from folder names by one rule (:func:`class_name`): a name whose bytes on
  disk are not UTF-8 (Python hands them over as surrogate escapes) is read byte by byte as Latin-1
  (``caf\xe9`` -> ``café``); then Unicode NFC (folders zipped on macOS arrive decomposed), control and
  format characters removed, ``_`` read as a space, runs of whitespace as one space, surrounding whitespace
  removed; case is kept (it is part of the prompt). A folder whose name is empty after this is refused
  (:class:`~bayesvlm_explain.inputs.InputError`), never read as a class without a name. Names are
  *matched* to given class names with :func:`normalise_name` (also case-, ``-``- and ``_``-insensitive).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from ..inputs import INVISIBLE, InputError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
IGNORED_NAMES: tuple[str, ...] = ("__MACOSX",)


def is_visible(path: Path) -> bool:
    """Whether a file or folder takes part: not hidden (``.name``) and not an archiver's ``__MACOSX``."""
    return not path.name.startswith(".") and path.name not in IGNORED_NAMES


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image by its suffix (:data:`IMAGE_SUFFIXES`, any case); not a content check."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def folder_files(folder: Path) -> list[Path]:
    """The visible files directly inside ``folder``, sorted by name (any suffix)."""
    return sorted(f for f in folder.iterdir() if f.is_file() and is_visible(f))


def class_folders(root: Path) -> list[Path]:
    """The visible sub-folders of ``root`` (one per class), sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and is_visible(p))


def _decoded(name: str) -> str:
    """The decoding rule of :func:`class_name`, without refusing an empty result."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from the file system: read them as Latin-1
        name = os.fsencode(name).decode("latin-1")
    name = unicodedata.normalize("NFC", name)
    name = "".join(c for c in name if c.isspace() or unicodedata.category(c) not in INVISIBLE)
    return " ".join(name.replace("_", " ").split())


def class_name(folder_name: str) -> str:
    """The class name a folder stands for (module doc: non-UTF-8 bytes as Latin-1, NFC, control and format
    characters removed, ``_`` as a space, whitespace collapsed and stripped); :class:`InputError` if that
    leaves nothing."""
    name = _decoded(folder_name)
    if not name:
        raise InputError(f"class folder {folder_name[:40]!r} has an empty name once decoded; rename it")
    return name


def normalise_name(name: str) -> str:
    """Key for matching folders / labels to class names: :func:`class_name`, lower case, ``-`` as a space."""
    return _decoded(name.replace("-", " ")).lower()
