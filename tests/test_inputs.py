"""Library-level input checks (issue 9 §4): upright images, messages without server paths, odd prompts."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from conftest import PROMPTS, random_images
from PIL import Image

import bayesvlm_explain as bx
from bayesvlm_explain.inputs import check_prompts, load_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _sideways_jpeg(mode: str) -> bytes:
    """A 40x20 JPEG, left half red and right half blue, tagged EXIF orientation 6 ("rotate 90° CW")."""
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(Image.new("RGB", (20, 20), RED), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.convert(mode).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_exif_orientation_is_applied_for_every_mode(tmp_path, mode):
    data = _sideways_jpeg(mode)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    for source in (data, path, Image.open(io.BytesIO(data))):
        img = load_image(source)
        assert img.size == (20, 40)  # upright: the stored left half is now on top
        top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
        if mode == "RGB":
            assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
        else:
            assert top != bottom


def test_file_errors_name_the_file_not_the_server_path(tmp_path, tiny_vlm):
    secret = tmp_path / "srv" / "private"
    secret.mkdir(parents=True)
    with pytest.raises(bx.InputError, match="image file not found: missing.png") as err:
        load_image(secret / "missing.png")
    assert str(secret) not in str(err.value)
    bad = secret / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(bx.InputError, match=r"images\[0\]: not a readable image: notes.png") as err:
        tiny_vlm.predict([str(bad)], PROMPTS)
    assert "srv" not in str(err.value)
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).save(buf, format="PNG")  # noise: the pixel data spans many bytes
    trunc = secret / "cut.png"
    trunc.write_bytes(buf.getvalue()[:1000])
    with pytest.raises(bx.InputError, match=r"image cut.png could not be decoded \(\w+\)$") as err:
        load_image(trunc)
    assert "srv" not in str(err.value)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` 1-bit pixels but holds no image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_header_is_an_input_error():
    with pytest.raises(bx.InputError, match="exceeds the limit"):
        load_image(_png_header_only(30_000, 30_000))  # 900 Mpx: PIL itself raises at open


def test_lone_surrogate_prompt_gets_a_message_about_the_prompt(tiny_vlm):
    with pytest.raises(bx.InputError, match=r"prompt 2 is not valid text \(an unpaired surrogate .* position 2\)"):
        check_prompts(["a cat", "a \ud800 dog"])
    with pytest.raises(bx.InputError, match="prompt 1 is not valid text"):
        tiny_vlm.predict(random_images(tiny_vlm, 1), ["\udfff"])


@pytest.mark.parametrize("prompt", ["\x00\x01\x02", "\t\x0b\u200b\u2028 ", "\u00a0\x7f"])
def test_prompt_of_only_control_characters_is_empty(prompt):
    with pytest.raises(bx.InputError, match="prompt 2 is empty"):  # counted from 1, like the studio's lines
        check_prompts(["a cat", prompt])
    assert check_prompts(["a\x00cat"]) == ["a\x00cat"]  # one visible character is enough
