"""Work bounded by declared pixels (zip and batch budgets, downscaled decoding), undecodable files skipped,
and temporary folders removed when the server is killed."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from bayesvlm_explain.inputs import InputError, load_image
from bayesvlm_explain.ui import tabs
from bayesvlm_explain.ui.archives import ArchiveError, extracted
from bayesvlm_explain.ui.uploads import MAX_REQUEST_PIXELS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A 1-bit 6300x6300 PNG: about 5 KB on disk, 39.7 million pixels."""
    buf = io.BytesIO()
    Image.new("1", (6300, 6300)).save(buf, format="PNG")
    return buf.getvalue()


def _png(color=(10, 200, 30), size=(24, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _zips() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("bayesvlm-zip-*")}


def test_a_zip_of_pixel_bombs_is_refused_from_the_headers(tmp_path, bomb_png, tiny_vlm):
    path = tmp_path / "bombs.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(1000):
            zf.writestr(f"pool/{i:04d}.png", bomb_png)
    assert path.stat().st_size < 400_000  # passes every byte-based zip limit
    before = _zips()
    with pytest.raises(ArchiveError, match="bombs.zip: the images declare 318 million pixels together"):
        with extracted(path):
            pass
    assert _zips() <= before  # nothing left behind
    with pytest.raises(InputError, match="million pixels"):
        tabs.select.select_archive(tiny_vlm, str(path), "a cat\na dog")
    below = tmp_path / "seven.zip"  # 7 x 39.7 M = 278 M: within the budget, decoded downscaled
    with zipfile.ZipFile(below, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(7):
            zf.writestr(f"{i}.png", bomb_png)
    with extracted(below) as root:
        assert len(list(root.iterdir())) == 7


def test_a_batch_is_bounded_by_the_sum_of_declared_pixels_before_decoding(tmp_path, bomb_png, tiny_vlm,
                                                                        monkeypatch):
    files = []
    for i in range(16):
        (tmp_path / f"b{i}.png").write_bytes(bomb_png)
        files.append(str(tmp_path / f"b{i}.png"))

    def never(path):
        raise AssertionError("decoded although the batch is over its pixel budget")

    with monkeypatch.context() as m:
        m.setattr(tabs.batch, "image_of", never)
        with pytest.raises(InputError, match=f"the batch: .* at most {MAX_REQUEST_PIXELS // 10**6:,} million"):
            tabs.batch.batch_table(tiny_vlm, files, "a cat\na dog")
    out = tabs.batch.batch_table(tiny_vlm, files[:2], "a cat\na dog")  # 2 bombs: within budget, downscaled
    assert len(out.rows) == 2


def test_batch_skips_and_lists_unusable_files_keeping_good_rows(tmp_path, tiny_vlm):
    good = tmp_path / "good.png"
    good.write_bytes(_png())
    cut = tmp_path / "cut.png"
    cut.write_bytes(_png((200, 0, 0), (64, 64))[:60])  # a valid header, the image data cut short
    text = tmp_path / "notes.png"
    text.write_text("hello")
    out = tabs.batch.batch_table(tiny_vlm, [str(good), str(cut), str(text)], "a cat\na dog")
    assert [r[0] for r in out.rows] == ["good.png"]
    assert len(out.refused) == 2 and out.json["refused"] == out.refused
    assert any(r.startswith("cut.png: could not be decoded") for r in out.refused)
    assert any(r.startswith("notes.png: not a JPEG") for r in out.refused)
    assert all(str(tmp_path) not in r for r in out.refused)
    with pytest.raises(InputError, match="no usable image in the batch: cut.png"):
        tabs.batch.batch_table(tiny_vlm, [str(cut)], "a cat\na dog")


def test_select_skips_and_lists_undecodable_images(tmp_path, tiny_vlm):
    path = tmp_path / "pool.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.writestr(f"pool/{i}.png", _png((40 * i, 90, 200)))
        zf.writestr("pool/broken.png", _png((1, 2, 3), (64, 64))[:60])
    out = tabs.select.select_archive(tiny_vlm, str(path), "a cat\na dog")
    assert out.json["images"] == 3 and len(out.json["scores"]) == 3
    assert out.json["refused"] == ["pool/broken.png: could not be decoded as a PNG image"]
    assert "broken.png" in out.summary


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decoding_downscales_to_the_needed_side_and_keeps_orientation(tmp_path, fmt):
    img = Image.new("RGB", (2000, 1200), (250, 20, 20))
    img.paste((20, 20, 250), (0, 0, 1000, 1200))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    path = tmp_path / f"big.{fmt.lower()}"
    img.save(path, format=fmt, exif=exif)
    full = load_image(path)
    small = load_image(path, min_side=300)
    assert full.size == (1200, 2000) and small.size == (300, 500)  # upright, shorter side 1200 // 4
    # the same picture: the top (the blue half after rotation) is blue in both
    assert small.getpixel((150, 50))[2] > 200 and full.getpixel((600, 100))[2] > 200
    assert small.getpixel((150, 450))[0] > 200
    assert load_image(path, min_side=700).size == (1200, 2000)  # a factor below 2: decoded as is


def test_a_killed_server_removes_its_temporary_folders(tmp_path):
    """SIGTERM while a zip is extracted on a worker thread: the zip and studio folders are gone after exit."""
    archive = tmp_path / "pool.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.png", _png())
    script = textwrap.dedent(f"""
        import sys, threading, time
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from conftest import TINY_CLIP, build_tiny
        from bayesvlm_explain.ui import build_app
        from bayesvlm_explain.ui import archives
        from bayesvlm_explain.ui.archives import extracted
        app = build_app(build_tiny(TINY_CLIP))
        app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
        def run():
            with extracted({str(archive)!r}) as root:
                print("LIVE", *sorted(archives._LIVE), flush=True)
                time.sleep(600)
        threading.Thread(target=run, daemon=True).start()
        while True:
            time.sleep(0.1)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("LIVE "), line
        live = [Path(p) for p in line.split()[1:]]
        assert sorted(p.name.split("-")[1] for p in live) == ["studio", "zip"] and all(p.is_dir() for p in live)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert not any(p.exists() for p in live)
