"""Uploaded zip archives: refused from their directory before extraction, extracted into a folder that is
always removed, images header-checked; messages name the zip, never a server path."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from bayesvlm_explain.inputs import InputError
from bayesvlm_explain.ui.archives import ArchiveError, check_archive, extracted, image_files


def png_bytes(color=(10, 200, 30), size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


def test_labelled_zip_extracts_class_folders_and_is_cleaned_up(tmp_path):
    z = make_zip(tmp_path / "pets.zip", {"pets/cat/a.png": png_bytes(), "pets/cat/b.png": png_bytes((1, 2, 3)),
                                         "pets/dog/c.png": png_bytes((200, 0, 0)), "pets/dog/notes.txt": b"hi",
                                         "__MACOSX/pets/._a.png": b"junk", "pets/dog/bad.png": b"not a png"})
    with extracted(z) as root:
        tree = image_files(root, "pets.zip", need_classes=True)
        assert list(tree.classes) == ["cat", "dog"]
        assert [f.name for f in tree.classes["cat"]] == ["a.png", "b.png"]
        assert [f.name for f in tree.classes["dog"]] == ["c.png"]  # text file ignored, bad PNG refused
        assert tree.refused == ["pets/dog/bad.png: not a JPEG, PNG, WebP, GIF or BMP image"]
        assert all(f.is_file() for f, _ in tree.all_images())
        kept = root
    assert not kept.exists()  # the temporary folder is gone


def test_folder_is_removed_after_an_error_inside(tmp_path):
    z = make_zip(tmp_path / "pool.zip", {"a.png": png_bytes()})
    with pytest.raises(RuntimeError), extracted(z) as root:
        kept = root
        raise RuntimeError("boom")
    assert not kept.exists()


def test_flat_pool_inside_one_folder(tmp_path):
    z = make_zip(tmp_path / "pool.zip", {"pool/x.png": png_bytes(), "pool/y.png": png_bytes((9, 9, 9))})
    with extracted(z) as root:
        tree = image_files(root, "pool.zip")
        assert [f.name for f in tree.flat] == ["x.png", "y.png"] and tree.classes == {}
        with pytest.raises(ArchiveError, match="one folder per class"):
            image_files(root, "pool.zip", need_classes=True)


@pytest.mark.parametrize("member,cause", [("../evil.png", "'..'"), ("a/../../evil.png", "'..'"),
                                          ("/etc/evil.png", "absolute"), ("C:/evil.png", "absolute"),
                                          ("a\\..\\evil.png", "absolute")])
def test_traversal_is_refused_before_extraction(tmp_path, member, cause):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok.png", png_bytes())
        zf.writestr(zipfile.ZipInfo(member), png_bytes())
    with pytest.raises(ArchiveError, match=cause) as err:
        with extracted(z):
            pytest.fail("extracted an archive with a traversal entry")
    assert str(err.value).startswith("evil.zip:") and str(tmp_path) not in str(err.value)
    assert not (tmp_path / "evil.png").exists() and not Path("/etc/evil.png").exists()


def test_symlink_entry_is_refused(tmp_path):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("cat/passwd.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        check_archive(z)


def test_too_many_members_and_too_large_are_refused(tmp_path):
    z = make_zip(tmp_path / "many.zip", {f"p/{i}.png": b"x" for i in range(12)})
    with pytest.raises(ArchiveError, match="12 entries; .* at most 10"):
        check_archive(z, max_members=10)
    # 3 MB of zeros compress to a few KB: the declared uncompressed size is what counts
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("p/zeros.png", bytes(3 * 2**20))
    assert big.stat().st_size < 100_000
    with pytest.raises(ArchiveError, match="3.0 MB uncompressed; .* at most 2 MB") as err:
        with extracted(big, max_total_bytes=2 * 2**20):
            pytest.fail("extracted an over-large archive")
    assert str(tmp_path) not in str(err.value)


def test_corrupt_and_non_zip_uploads(tmp_path):
    not_zip = tmp_path / "photos.zip"
    not_zip.write_bytes(png_bytes())
    with pytest.raises(ArchiveError, match="photos.zip: not a readable zip"):
        check_archive(not_zip)
    # a valid directory whose member data is damaged: refused while extracting, folder removed
    z = make_zip(tmp_path / "damaged.zip", {"cat/a.png": png_bytes(), "dog/b.png": png_bytes((5, 5, 5))})
    raw = bytearray(Path(z).read_bytes())
    start = raw.index(b"IHDR")
    raw[start:start + 40] = bytes(40)
    Path(z).write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="damaged.zip: the archive is corrupt") as err:
        with extracted(z):
            pass
    assert str(tmp_path) not in str(err.value)
    assert isinstance(err.value, InputError)  # the studio shows it as a user error


def test_empty_class_folder_and_no_images(tmp_path):
    z = make_zip(tmp_path / "labels.zip", {"cat/a.png": png_bytes(), "dog/": b"", "dog/readme.txt": b"x"})
    with extracted(z) as root:
        with pytest.raises(ArchiveError, match="labels.zip: class folder 'dog' holds no usable image") as err:
            image_files(root, "labels.zip", need_classes=True)
        assert str(root) not in str(err.value)
    z = make_zip(tmp_path / "text.zip", {"a.txt": b"x", "b.png": b"fake"})
    with extracted(z) as root, pytest.raises(ArchiveError, match="no JPEG, PNG.*refused: b.png"):
        image_files(root, "text.zip")
    empty = make_zip(tmp_path / "empty.zip", {})
    with pytest.raises(ArchiveError, match="empty"):
        check_archive(empty)


@pytest.mark.parametrize("field, value, message", [
    ("flags", 1, "entry 'cat/a.png' is an encrypted entry; refused"),  # seen in the directory, before extraction
    ("method", 99, "the archive is corrupt"),  # zipfile's NotImplementedError while extracting
])
def test_entries_zipfile_cannot_extract_are_refused(tmp_path, field, value, message):
    z = make_zip(tmp_path / "odd.zip", {"cat/a.png": png_bytes(), "dog/b.png": png_bytes((5, 5, 5))})
    raw = bytearray(Path(z).read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        at = raw.index(signature) + flags_at + (2 if field == "method" else 0)
        raw[at:at + 2] = value.to_bytes(2, "little")
    Path(z).write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=f"odd.zip: {message}"), extracted(z):
        pass
