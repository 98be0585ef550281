"""Uploaded zip archives of images, checked before anything is extracted (no web framework).

:func:`extracted` refuses, from the zip's central directory alone, an unreadable archive, more than
:data:`MAX_MEMBERS` entries, more than :data:`MAX_TOTAL_BYTES` declared uncompressed bytes, absolute paths,
``..`` components, drive letters, symbolic links and encrypted entries; then it extracts member by member
into a temporary folder (reading never more bytes than a member declares), summing the pixel counts the
images' headers declare, and stops with an error as soon as that sum passes
:data:`~.uploads.MAX_REQUEST_PIXELS` (a 214 KB zip of 1000 1-bit 6300x6300 PNGs is refused after its
eighth member, in milliseconds). The folder is removed when the ``with`` block ends, whatever happens,
and at the latest when the process exits (:func:`temp_folder`: ``atexit``, and SIGTERM once
:func:`remove_temp_folders_on_exit` is installed). :func:`image_files` lists the images of the extracted
tree, each checked by its header (:func:`.uploads.check_upload`); refused files are reported, not decoded;
:func:`decoded` skips (and reports) files that fail to decode. Messages name the zip and its members by
their names inside the archive, never a server path.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..data.folders import (
    IMAGE_SUFFIXES,
    class_folders,
    class_name,
    folder_files,
    is_image_file,
    is_visible,
    normalise_name,
)
from ..inputs import MAX_IMAGE_PIXELS, InputError

if TYPE_CHECKING:
    from PIL import Image

from .uploads import MAX_REQUEST_PIXELS, check_pixel_budget, check_upload, display_name, image_header, open_upload

MAX_MEMBERS = 2000  # entries (files and folders) in one archive
MAX_TOTAL_BYTES = 256 * 2**20  # declared uncompressed size of all entries together


_LIVE: set[Path] = set()  # temporary folders of this process not yet removed
_LIVE_LOCK = threading.Lock()


def temp_folder(prefix: str) -> Path:
    """A new temporary folder, removed at the latest when the process exits (see :func:`remove_temp_folder`)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    with _LIVE_LOCK:
        _LIVE.add(root)
    return root


def remove_temp_folder(root: Path) -> None:
    """Delete a folder made by :func:`temp_folder` (and forget it)."""
    shutil.rmtree(root, ignore_errors=True)
    with _LIVE_LOCK:
        _LIVE.discard(root)


@atexit.register
def _remove_live_folders() -> None:
    for root in list(_LIVE):
        remove_temp_folder(root)


def remove_temp_folders_on_exit() -> None:
    """Make SIGTERM exit the process normally (``atexit`` runs, so :func:`temp_folder` folders go too);
    only from the main thread, and only where SIGTERM still has its default action."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class ArchiveError(InputError):
    """An uploaded archive that is refused; the message names the zip (base name) and the cause."""


@dataclass
class ImageTree:
    """The images of an extracted archive: ``classes`` maps a class name (its folder's name decoded by
    :func:`~bayesvlm_explain.data.folders.class_name`) to its image files (empty when the images lie flat),
    ``flat`` holds images outside class folders, ``refused`` ``"name: why"``."""

    classes: dict[str, list[Path]] = field(default_factory=dict)
    flat: list[Path] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def all_images(self) -> list[tuple[Path, str | None]]:
        """``(file, class folder or None)`` of every accepted image, classes first, in sorted order."""
        return [(f, c) for c, files in self.classes.items() for f in files] + [(f, None) for f in self.flat]


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "an absolute path or a Windows path"
    if any(part == ".." for part in PurePosixPath(name).parts):
        return "a '..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    if info.flag_bits & 0x1:
        return "an encrypted entry"
    return None


def check_archive(path: str | os.PathLike[str], max_members: int = MAX_MEMBERS,
                  max_total_bytes: int = MAX_TOTAL_BYTES) -> list[zipfile.ZipInfo]:
    """The archive's entries after every check on its directory; :class:`ArchiveError` otherwise."""
    name = display_name(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise ArchiveError(f"{name}: not a readable zip archive") from None
    if not infos:
        raise ArchiveError(f"{name}: the archive is empty")
    if len(infos) > max_members:
        raise ArchiveError(f"{name}: {len(infos)} entries; the studio takes archives of at most {max_members}")
    total = sum(i.file_size for i in infos)
    if total > max_total_bytes:
        raise ArchiveError(f"{name}: {total / 2**20:.1f} MB uncompressed; the studio takes at most "
                           f"{max_total_bytes // 2**20} MB")
    for info in infos:
        problem = _member_problem(info)
        if problem:
            raise ArchiveError(f"{name}: entry {info.filename[:80]!r} is {problem}; refused")
    return infos


@contextmanager
def extracted(path: str | os.PathLike[str], max_members: int = MAX_MEMBERS,
              max_total_bytes: int = MAX_TOTAL_BYTES, max_pixels: int = MAX_REQUEST_PIXELS) -> Iterator[Path]:
    """Check the archive (:func:`check_archive`), extract it into a new temporary folder and yield the
    folder; the folder is deleted on exit, also after an error. :class:`ArchiveError` as soon as the
    image headers extracted so far declare more than ``max_pixels`` pixels together."""
    name = display_name(path)
    infos = check_archive(path, max_members, max_total_bytes)
    root = temp_folder("bayesvlm-zip-")
    pixels = 0
    try:
        try:
            with zipfile.ZipFile(path) as zf:
                for info in infos:
                    target = root.joinpath(*PurePosixPath(info.filename).parts)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        data = src.read(info.file_size + 1)  # never more than declared (+1 to notice a lie)
                        if len(data) != info.file_size:
                            raise ArchiveError(f"{name}: entry {info.filename[:80]!r} holds more or fewer bytes "
                                               "than its header declares")
                        pixels += _declared_pixels(target, data)
                        try:
                            check_pixel_budget(pixels, name, max_pixels)
                        except InputError as err:
                            raise ArchiveError(str(err)) from None
                        dst.write(data)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
            raise ArchiveError(f"{name}: the archive is corrupt (an entry cannot be extracted)") from None
        yield root
    finally:
        remove_temp_folder(root)


def _declared_pixels(target: Path, data: bytes) -> int:
    """Pixels an image member's header declares (0 for other files, unreadable headers and images over
    the per-image cap: those are refused one by one later, never decoded)."""
    if not is_image_file(target):
        return 0
    try:
        _, w, h = image_header(io.BytesIO(data))
    except (InputError, OSError, ValueError, IndexError):
        return 0
    return w * h if 0 < w * h <= MAX_IMAGE_PIXELS else 0


def decoded(files: list[tuple[Path, str | None]], root: Path, refused: list[str]
            ) -> Iterator[tuple[Path, str | None, Image.Image]]:
    """``(file, folder, RGB image)`` for each of ``files`` that decodes (:func:`.uploads.open_upload`); the
    others are appended to ``refused`` as ``"path in the archive: why"`` and skipped."""
    for f, folder in files:
        try:
            img = open_upload(f)
        except InputError as err:
            refused.append(f"{f.relative_to(root).as_posix()}: {str(err).split(': ', 1)[-1]}")
            continue
        yield f, folder, img


def image_files(root: Path, archive_name: str, need_classes: bool = False) -> ImageTree:
    """The images under an extracted archive ``root``, after each one's header check.

    A single top-level folder holding everything is looked into. Sub-folders of the (effective) root are
    class folders, with their images directly inside; image files at the root are ``flat``. Folders and
    files are read as :mod:`bayesvlm_explain.data.folders` defines: files whose suffix is not an image
    suffix are ignored; files with an image suffix that fail :func:`.uploads.check_upload` are listed in
    ``refused``. ``need_classes`` requires class folders and no flat images. Raises :class:`ArchiveError`
    for an empty class folder, two folders of one class name, or an archive without images.
    """
    base = root
    while True:
        entries = [p for p in base.iterdir() if is_visible(p)]
        if len(entries) == 1 and entries[0].is_dir() and class_folders(entries[0]):
            base = entries[0]  # "pets.zip" holding "pets/cat/...", "pets/dog/..."
        elif len(entries) == 1 and entries[0].is_dir() and not need_classes:
            base = entries[0]  # "pool.zip" holding "pool/a.png", ...
        else:
            break
    tree = ImageTree()

    def accepted(files: list[Path]) -> list[Path]:
        out = []
        for f in files:
            if not is_image_file(f):
                continue
            try:
                check_upload(f)
                out.append(f)
            except InputError as err:
                tree.refused.append(f"{f.relative_to(root).as_posix()}: {str(err).split(': ', 1)[-1]}")
        return out

    tree.flat = accepted(folder_files(base))
    for folder in class_folders(base):
        images = accepted(folder_files(folder))
        if not images:
            raise ArchiveError(f"{archive_name}: class folder {folder.name!r} holds no usable image "
                               f"({', '.join(IMAGE_SUFFIXES)})")
        try:
            name = class_name(folder.name)
        except InputError as err:
            raise ArchiveError(f"{archive_name}: {err}") from None
        if normalise_name(name) in map(normalise_name, tree.classes):
            raise ArchiveError(f"{archive_name}: two class folders stand for the class {name!r}")
        tree.classes[name] = images
    if need_classes and (tree.flat or len(tree.classes) < 2):
        raise ArchiveError(f"{archive_name}: expected one folder per class (at least 2) with the images inside, "
                           f"found {len(tree.classes)} class folders and {len(tree.flat)} loose images")
    if not tree.classes and not tree.flat:
        raise ArchiveError(f"{archive_name}: no JPEG, PNG, WebP, GIF or BMP image in the archive"
                           + (f" (refused: {'; '.join(tree.refused[:3])})" if tree.refused else ""))
    return tree
