"""Uploaded zip archives of images, checked before anything is extracted (no web framework).

:func:`extracted` refuses, from the zip's central directory alone, an unreadable archive, more than
:data:`MAX_MEMBERS` entries, more than :data:`MAX_TOTAL_BYTES` declared uncompressed bytes, absolute paths,
``..`` components, drive letters, symbolic links and encrypted entries; then it extracts member by member
into a temporary folder (reading never more bytes than a member declares) that is removed when the ``with``
block ends, whatever happens. :func:`image_files` lists the images of the extracted tree, each checked by
its header (:func:`.uploads.check_upload`); refused files are reported, not decoded. Messages name the zip
and its members by their names inside the archive, never a server path.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..data.folders import (
    IMAGE_SUFFIXES,
    class_folders,
    class_name,
    folder_files,
    is_image_file,
    is_visible,
    normalise_name,
)
from ..inputs import InputError
from .uploads import check_upload, display_name

MAX_MEMBERS = 2000  # entries (files and folders) in one archive
MAX_TOTAL_BYTES = 256 * 2**20  # declared uncompressed size of all entries together


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
              max_total_bytes: int = MAX_TOTAL_BYTES) -> Iterator[Path]:
    """Check the archive (:func:`check_archive`), extract it into a new temporary folder and yield the
    folder; the folder is deleted on exit, also after an error."""
    name = display_name(path)
    infos = check_archive(path, max_members, max_total_bytes)
    root = Path(tempfile.mkdtemp(prefix="bayesvlm-zip-"))
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
                        dst.write(data)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
            raise ArchiveError(f"{name}: the archive is corrupt (an entry cannot be extracted)") from None
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
        name = class_name(folder.name)
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
