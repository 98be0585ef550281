"""One definition of image files and class folders: the command line (evaluate) and the studio's zips agree."""

from __future__ import annotations

import shutil
import unicodedata

import pytest
from PIL import Image

from bayesvlm_explain.data.folders import IMAGE_SUFFIXES, class_name, is_image_file, normalise_name
from bayesvlm_explain.evaluation.evaluate import ImageFolder, open_labeled
from bayesvlm_explain.ui.archives import ArchiveError, extracted, image_files
from bayesvlm_explain.ui.uploads import EXTENSIONS


def test_class_name_rule():
    assert class_name("golden_retriever") == "golden retriever"
    assert class_name("  red__truck ") == "red truck"
    assert class_name("Cat") == "Cat"  # case is part of the prompt
    decomposed = unicodedata.normalize("NFD", "café")
    assert decomposed != "café" and class_name(decomposed) == "café"  # macOS zips store NFD names
    assert normalise_name("Golden-Retriever") == normalise_name("golden_retriever") == "golden retriever"


def test_one_suffix_list_and_no_tiff_anywhere(tmp_path):
    assert EXTENSIONS == list(IMAGE_SUFFIXES)
    assert not {".tif", ".tiff"} & set(IMAGE_SUFFIXES)
    assert is_image_file(tmp_path / "a.JPG") and not is_image_file(tmp_path / "a.tiff")


def _tree(root):
    for folder, files in {"golden_retriever": ["a.png", "b.JPG", "c.tiff", "notes.txt", ".hidden.png"],
                          "Cat": ["d.webp"], ".git": ["e.png"], "__MACOSX": ["f.png"]}.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            path = root / folder / name
            if name.endswith(".txt"):
                path.write_text("not an image")
            else:
                fmt = {"png": "PNG", "jpg": "JPEG", "tiff": "TIFF", "webp": "WEBP"}[name.rsplit(".", 1)[1].lower()]
                Image.new("RGB", (8, 8), "red").save(path, format=fmt)


def test_command_line_and_studio_read_a_folder_alike(tmp_path):
    """The same tree read by ``evaluate`` and, zipped, by the studio: same classes, same image files."""
    _tree(tmp_path / "pets")
    labeled = open_labeled(tmp_path / "pets")
    cli_images = {(p.caption, p.image.name) for p in labeled.source if not p.problem}
    skipped = sorted(p.image.name for p in labeled.source if p.problem)
    archive = shutil.make_archive(str(tmp_path / "pets"), "zip", tmp_path, "pets")
    with extracted(archive) as root:
        tree = image_files(root, "pets.zip", need_classes=True)
        studio_images = {(c, f.name) for c, files in tree.classes.items() for f in files}
    assert labeled.classnames == list(tree.classes) == ["Cat", "golden retriever"]
    decoded = {(class_name(c), f) for c, f in cli_images}
    assert decoded == studio_images == {("Cat", "d.webp"), ("golden retriever", "a.png"),
                                        ("golden retriever", "b.JPG")}
    assert skipped == ["c.tiff", "notes.txt"]  # TIFF is not read here either
    assert ImageFolder(tmp_path / "pets").classes == ["Cat", "golden_retriever"]


def test_two_folders_of_one_class_are_refused(tmp_path):
    for folder in ("golden_retriever", "Golden Retriever", "cat"):
        (tmp_path / "z" / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "z" / folder / "a.png")
    archive = shutil.make_archive(str(tmp_path / "z"), "zip", tmp_path / "z")
    with extracted(archive) as root, pytest.raises(ArchiveError, match="two class folders"):
        image_files(root, "z.zip", need_classes=True)
