"""Every error path a project error with a user message: numbers, posterior JSON, tokenizer code, folder
names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

import bayesvlm_explain as bx
from bayesvlm_explain.data.folders import class_name, normalise_name
from bayesvlm_explain.inputs import InputError, check_number
from bayesvlm_explain.loading import ModelFileError, _check_text_tower
from bayesvlm_explain.ui import tabs


@pytest.mark.parametrize("value, message", [
    (float("nan"), "finite number"), (float("inf"), "finite number"), ("16", "finite number"),
    (True, "finite number"), (None, "finite number"), (0, "between 1 and 64"), (65, "between 1 and 64"),
    (4.5, "whole number")])
def test_numbers_are_checked_on_the_server(value, message):
    with pytest.raises(InputError, match=f"steps must be .*{message}|steps must be a {message}"):
        check_number(value, "steps", 1, 64, integer=True)
    assert check_number(16.0, "steps", 1, 64, integer=True) == 16 and check_number(0.5, "x", 0, 1) == 0.5


def test_explain_with_nan_steps_is_a_user_error(tiny_vlm, tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (9, 9, 200)).save(path)
    for steps in (float("nan"), float("inf"), -3):
        with pytest.raises(InputError, match="steps must be"):
            tabs.explain.explain_prompt(tiny_vlm, str(path), "a cat\na dog", steps=steps)


@pytest.fixture()
def saved(tmp_path, tiny_vlm) -> Path:
    return tiny_vlm.posterior.save(tmp_path / "post")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["image"].update(prior_precision=10**400), "at most 30 digits"),
    (lambda m: m["text"].update(pseudo_count=1e999), "out of range"),
    (lambda m: m.update(provenance={"deep": "[" * 100_000 + "]" * 100_000}), None),  # in a string: fine
])
def test_posterior_json_numbers_are_range_checked(saved, edit, message):
    path = saved / "posterior.json"
    meta = json.loads(path.read_text())
    edit(meta)
    text = json.dumps(meta).replace("Infinity", "1e999")
    path.write_text(text)
    if message is None:
        assert bx.Posterior.load(saved).metadata["provenance"]["deep"].startswith("[[[")
        return
    with pytest.raises(bx.PosteriorError, match=f"posterior.json: .*{message}"):
        bx.Posterior.load(saved)


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "nests deeper than 32"),
    ('{"image": {"prior_precision": NaN}}', "NaN is not a JSON number"),
    ('{"format_version": 1, "pad": "' + "x" * (1 << 20) + '"}', "at most 1,048,576"),
    ("{", "not valid JSON"),
])
def test_posterior_json_is_parsed_with_limits(saved, text, message):
    (saved / "posterior.json").write_text(text)
    with pytest.raises(bx.PosteriorError, match=message):
        bx.Posterior.load(saved)


def test_reference_json_with_a_400_digit_lambda(tmp_path, tiny_vlm):
    ref = tiny_vlm.posterior.save_reference_dir(tmp_path / "ref")
    hyper = json.loads((ref / "prior_precision_analytic.json").read_text())
    hyper["lambda_img"] = 10**400
    (ref / "prior_precision_analytic.json").write_text(json.dumps(hyper))
    with pytest.raises(bx.PosteriorError, match="prior_precision_analytic.json: .*at most 30 digits"):
        bx.Posterior.from_reference_dir(ref)


def test_a_tokenizer_naming_code_is_a_model_file_error(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "Evil", "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    with pytest.raises(ModelFileError, match=r"tokenizer_config.json asks to run code .*auto_map"):
        _check_text_tower({"hf_tokenizer_name": str(tok)}, trust_remote_code=False)
    _check_text_tower({"hf_tokenizer_name": str(tok)}, trust_remote_code=True)  # the caller opted in
    (tok / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    _check_text_tower({"hf_tokenizer_name": str(tok)}, trust_remote_code=False)  # no code: fine


def test_class_folder_names_are_decoded_by_the_stated_rule(tmp_path):
    latin1 = os.fsdecode(b"caf\xe9_au_lait")  # not UTF-8: surrogate escapes from the file system
    assert class_name(latin1) == "café au lait"
    assert class_name("red\u200b_truck\x07") == "red truck"  # format / control characters removed
    assert normalise_name("-") == ""  # matching never refuses
    for empty in ("___", "\u200b", " \t"):
        with pytest.raises(InputError, match="empty name once decoded"):
            class_name(empty)
    if os.uname().sysname == "Linux":  # a real folder with a non-UTF-8 name, read through the zip route
        import zipfile

        from bayesvlm_explain.ui.archives import ArchiveError, extracted, image_files

        png = tmp_path / "x.png"
        Image.new("RGB", (8, 8)).save(png)
        archive = tmp_path / "c.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(png, "cats/a.png")
            zf.write(png, "___/b.png")
        with extracted(archive) as root, pytest.raises(ArchiveError, match="c.zip: class folder '___'"):
            image_files(root, "c.zip", need_classes=True)
        folder = tmp_path / os.fsdecode(b"d\xe9j\xe0")
        folder.mkdir()
        assert class_name(folder.name) == "déjà"
