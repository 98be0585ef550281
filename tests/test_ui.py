"""The studio: its four views as plain functions, then served over HTTP and driven by gradio_client."""

from __future__ import annotations

import math
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bayesvlm_explain as bx
from bayesvlm_explain.ui import TABLE_HEADERS, build_app, parse_prompts, prediction_table, tabs, views
from bayesvlm_explain.ui.views import MAX_PROMPTS

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
CLASS_KEYS = {"prompt", "mean", "var", "var_image", "var_text", "var_interaction", "prob", "map_prob"}


@pytest.fixture()
def png(tmp_path):
    def make(name: str = "img.png", color=(0, 120, 255), size=(40, 40)) -> str:
        path = tmp_path / name
        Image.new("RGB", size, color).save(path)
        return str(path)
    return make


def test_inspect_json_has_the_documented_fields_and_adds_up(tiny_vlm, png):
    out = tabs.inspect.inspect_image(tiny_vlm, png(), "a cat\n\n a dog \na truck")
    classes, image = out.json["classes"], out.json["image"]
    assert [c["prompt"] for c in classes] == ["a cat", "a dog", "a truck"]
    assert all(set(c) == CLASS_KEYS for c in classes)
    assert abs(sum(c["prob"] for c in classes) - 1) < 1e-9 and abs(sum(c["map_prob"] for c in classes) - 1) < 1e-9
    for c in classes:
        assert math.isclose(c["var"], c["var_image"] + c["var_text"] + c["var_interaction"], rel_tol=1e-9)
    assert math.isclose(image["entropy"], image["aleatoric"] + image["epistemic"], rel_tol=1e-9)
    # the entropy is that of the probabilities shown (the same Monte Carlo draws)
    probs = np.array([c["prob"] for c in classes])
    assert math.isclose(image["entropy"], float(-(probs * np.log(probs)).sum()), rel_tol=1e-9)
    assert image["percentiles"] == {} and image["out_of_domain"] is False  # no yardstick for this model
    assert [r[0] for r in out.rows] == sorted([c["prompt"] for c in classes], key=lambda p: -next(
        c["prob"] for c in classes if c["prompt"] == p))
    assert len(out.rows[0]) == len(TABLE_HEADERS)
    assert "a cat" in out.bars and "logit" in out.bars


def test_scale_views_refit_lambda_leave_the_model_alone_and_drop_a_foreign_yardstick():
    from bayesvlm_explain.evaluation.calibrate import PSEUDO_COUNTS
    from bayesvlm_explain.ui.tabs.base import ScaleViews

    vlm = bx.BayesVLM.from_pretrained(device="cpu")  # bundled: posterior at its calibrated n, with yardstick
    n0, lam0 = vlm.posterior.image.pseudo_count, vlm.posterior.image.prior_precision
    views = ScaleViews(vlm, PSEUDO_COUNTS)
    assert views.default == n0 and n0 in views.grid and views.view(None) is vlm and views.view(n0) is vlm
    broad = views.view(views.check("1"))
    assert views.view(1.0) is broad  # made once
    assert broad.posterior.image.pseudo_count == 1.0 and broad.posterior.image.prior_precision != lam0
    assert (vlm.posterior.image.pseudo_count, vlm.posterior.image.prior_precision) == (n0, lam0)
    assert broad.assets.yardstick is None and "n = 1 " in broad.assets.yardstick_note
    assert vlm.assets.yardstick is not None
    # lambda is the marginal-likelihood optimum at that n, as optimize_prior_precision gives it
    fresh = bx.BayesVLM.from_pretrained(device="cpu")
    assert fresh.optimize_prior_precision(pseudo_count=1.0)["image"] == broad.posterior.image.prior_precision
    with pytest.raises(bx.InputError, match="must be one of"):
        views.check(0.5)
    with pytest.raises(bx.InputError, match="a number"):
        views.check("abc")


def test_percentiles_read_as_english_ordinals():
    from bayesvlm_explain.yardstick import ordinal

    assert [ordinal(x) for x in (1, 2, 3, 4, 11, 12, 13, 21, 33, 63, 100, 0.4, 111, 112)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "33rd", "63rd", "100th", "0th", "111th", "112th"]


def test_small_uncertainties_are_shown_not_rounded_to_zero():
    assert [views.nats(x) for x in (0.0, 1.2346, 0.0012, 4.62e-06)] == ["0", "1.235", "0.001", "4.6e-06"]
    assert [views.significant(x) for x in (0.123456, 4.6201e-06, 12.345)] == [0.123, 4.62e-06, 12.3]
    # a table column is formatted one way throughout: EPIG's 1.05e-05, 6.04e-07 and 3e-10 line up
    assert views.column_strings([1.05e-5, 6.04e-7, 3e-10]) == ["1.05e-05", "6.04e-07", "3.00e-10"]
    assert views.column_strings([0.5, 0.0012]) == ["0.5000", "0.0012"]


def test_prompts_are_cleaned_and_bad_ones_refused(tiny_vlm, png):
    assert parse_prompts(" a\x00 cat \n\x07\n a dog") == ["a cat", "a dog"]  # control characters dropped
    with pytest.raises(bx.InputError, match="non-empty"):
        parse_prompts("  \n \x01\x02 ")
    with pytest.raises(bx.InputError, match="surrogate"):
        parse_prompts("a \ud800 cat")
    with pytest.raises(bx.InputError, match="twice"):
        parse_prompts("a cat\na cat")
    assert len(parse_prompts("\n".join(f"p{i}" for i in range(MAX_PROMPTS)))) == MAX_PROMPTS == 1000
    with pytest.raises(bx.InputError, match="at most 1000"):
        parse_prompts("\n".join(f"p{i}" for i in range(MAX_PROMPTS + 1)))
    with pytest.raises(bx.InputError, match="upload an image"):
        prediction_table(tiny_vlm, None, "a cat")


def test_compare_expands_templates_and_reports_disagreement(tiny_vlm, png):
    out = tabs.compare.compare_sets(tiny_vlm, png(), ["a photo of {}", "", "a drawing of {}", "a cat\na truck"],
                             "cat\ndog")
    sets = out.json["sets"]
    assert [s["prompts"] for s in sets] == [["a photo of cat", "a photo of dog"],
                                          ["a drawing of cat", "a drawing of dog"], ["a cat", "a truck"]]
    for s in sets:
        assert set(s) == {"prompts", "classes", "top", "entropy", "epistemic", "relative_entropy"}
        k = s["top"]["index"]
        assert s["top"]["prob"] == max(c["prob"] for c in s["classes"]) == s["classes"][k]["prob"]
        assert 0 <= s["epistemic"] <= s["entropy"] <= math.log(2) + 1e-9
    assert out.json["most_certain"] == int(np.argmin([s["entropy"] for s in sets]))
    agree = len({s["top"]["index"] for s in sets}) == 1
    assert out.json["agree"] == agree and ("disagree" in out.summary) == (not agree)
    # sets of different sizes are ranked by entropy / log C, not by entropy (which grows with C)
    mixed = tabs.compare.compare_sets(tiny_vlm, png(), ["a cat\na dog", "a cat\na dog\na car\na cow\na hat"])
    rel = [s["entropy"] / math.log(len(s["prompts"])) for s in mixed.json["sets"]]
    assert [s["relative_entropy"] for s in mixed.json["sets"]] == pytest.approx(rel)
    assert mixed.json["most_certain"] == int(np.argmin(rel)) and "for its size" in mixed.summary
    with pytest.raises(bx.InputError, match="at least 2"):
        tabs.compare.compare_sets(tiny_vlm, png(), ["a cat", " ", "", ""])
    with pytest.raises(bx.InputError, match="labels"):
        tabs.compare.compare_sets(tiny_vlm, png(), ["a {}", "b {}"], "")


def test_explain_any_prompt_returns_figure_tokens_and_numbers(tiny_vlm, png):
    from matplotlib.figure import Figure

    path = png(color=(20, 200, 20))
    inspected = tabs.inspect.inspect_image(tiny_vlm, path, "a cat\na dog\na frog").json["classes"]
    last = min(inspected, key=lambda c: c["prob"])["prompt"]  # not the most probable prompt
    out = tabs.explain.explain_prompt(tiny_vlm, path, "a cat\na dog\na frog", last, "image_variance",
                               "integrated_gradients", steps=8, num_samples=200)
    p = out.json
    assert isinstance(out.figure, Figure) and p["prompt"] == last
    assert math.isclose(sum(p["shares"].values()), 1.0, rel_tol=1e-9)
    assert math.isclose(p["entropy"], p["aleatoric"] + p["epistemic"], rel_tol=1e-9)
    words = [t for t in p["tokens"] if not t["special"]]
    assert [t["token"] for t in words] == ["a", last.split()[1]] and any(t["special"] for t in p["tokens"])
    # the explained quantity is the prompt's image-side variance that Inspect reports
    var_image = next(c["var_image"] for c in inspected if c["prompt"] == last)
    assert p["attribution"]["target_value"] == pytest.approx(var_image, rel=1e-5)
    assert p["attribution"]["unit"] == "squared logits" and abs(p["attribution"]["delta"]) < 0.05 * var_image
    with pytest.raises(bx.InputError, match="not among"):
        tabs.explain.explain_prompt(tiny_vlm, path, "a cat\na dog", "a frog")
    with pytest.raises(bx.InputError, match="steps"):
        tabs.explain.explain_prompt(tiny_vlm, path, "a cat\na dog", "", steps=0)


def test_batch_sorted_by_epistemic_with_safe_csv(tiny_vlm, png):
    paths = [png(f"=img{i}.png", color=(40 * i, 255 - 30 * i, 9 * i)) for i in range(4)]
    out = tabs.batch.batch_table(tiny_vlm, paths, "a cat\na dog\na red square")
    epistemic = [row[6] for row in out.rows]
    assert epistemic == sorted(epistemic, reverse=True) and len(out.rows) == 4
    assert [e["image"]["epistemic"] for e in out.json["images"]] == sorted(
        (e["image"]["epistemic"] for e in out.json["images"]), reverse=True)
    lines = out.csv.splitlines()
    assert lines[0].split(",") == views.BATCH_HEADERS and all(line.startswith("'=img") for line in lines[1:])
    with pytest.raises(bx.InputError, match="at most"):
        tabs.batch.batch_table(tiny_vlm, [paths[0]] * 17, "a cat")


# -- uploads ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,ext,mode", [("PNG", "png", "RGB"), ("JPEG", "jpg", "RGB"), ("WEBP", "webp", "RGB"),
                                          ("WEBP", "webp", "RGBA"), ("GIF", "gif", "P"), ("BMP", "bmp", "RGB")])
def test_upload_header_dimensions_match_pil(tmp_path, fmt, ext, mode):
    from bayesvlm_explain.ui.uploads import check_upload

    path = tmp_path / f"x.{ext}"
    Image.new(mode, (37, 23)).save(path, format=fmt, **({"lossless": True} if mode == "RGBA" else {}))
    assert check_upload(path)[1:] == (37, 23)


def test_uploads_refused_before_decoding_without_server_paths(tmp_path):
    from bayesvlm_explain.ui.uploads import check_upload, open_upload

    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(bx.InputError) as err:
        open_upload(text)
    assert str(err.value).startswith("notes.png:") and str(tmp_path) not in str(err.value)
    # a PNG whose header declares 12000 x 12000 pixels: refused from the header (the body is garbage)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 12000, 12000)
                     + b"\x08\x00\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(bx.InputError, match="12000x12000"):
        check_upload(bomb)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(bx.InputError, match="empty"):
        check_upload(empty)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    with pytest.raises(bx.InputError, match="cut.jpg"):
        check_upload(cut)
    tiff = tmp_path / "x.tiff"
    Image.new("RGB", (8, 8)).save(tiff)
    with pytest.raises(bx.InputError, match="not a JPEG"):
        check_upload(tiff)


# -- served -------------------------------------------------------------------------------------------------
def test_every_api_name_serves_and_refuses_bad_input(tiny_vlm, png, tmp_path, capfd):
    import uuid

    from gradio.utils import get_upload_folder
    from gradio_client import Client, handle_file

    from bayesvlm_explain.ui.uploads import MAX_UPLOAD_BYTES

    app = build_app(tiny_vlm)
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        assert app.max_file_size == MAX_UPLOAD_BYTES
        assert urllib.request.urlopen(app.local_url, timeout=30).status == 200
        client = Client(app.local_url, verbose=False)
        assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
            "/predict", "/compare", "/explain", "/batch", "/calibrate", "/select"}
        img = handle_file(png())
        verdict, bars, table, payload = client.predict(img, "a red square\na blue circle", api_name="/predict")
        assert [c["prompt"] for c in payload["classes"]] == ["a red square", "a blue circle"]
        assert set(payload["image"]) >= {"entropy", "aleatoric", "epistemic", "percentiles", "out_of_domain"}
        assert table["headers"] == TABLE_HEADERS and len(table["data"]) == 2 and "entropy" in verdict
        alone = tabs.inspect.inspect_image(tiny_vlm, png(), "a red square\na blue circle").json["classes"]
        assert payload["classes"] == alone  # the server returns exactly what the library computes
        # the posterior scale is a per-request input: a broader posterior (smaller n) widens every logit
        n0 = tiny_vlm.posterior.image.pseudo_count
        _, _, _, wide = client.predict(img, "a red square\na blue circle", 0.001, api_name="/predict")
        assert all(w["var"] > c["var"] for w, c in zip(wide["classes"], payload["classes"], strict=True))
        assert tiny_vlm.posterior.image.pseudo_count == n0  # the shared model is untouched
        with pytest.raises(Exception, match="scale n must be one of"):
            client.predict(img, "a cat", 0.5, api_name="/predict")
        _, _, cmp = client.predict(img, "a {}", "the {}", "", "", "cat\ndog", api_name="/compare")
        assert [len(s["prompts"]) for s in cmp["sets"]] == [2, 2]
        summary, figure, tokens, exp, _ = client.predict(img, "a cat\na dog", "a dog", "total predictive entropy",
                                                      "saliency", 4, api_name="/explain")
        assert exp["prompt"] == "a dog" and exp["target"] == "entropy" and "a dog" in summary and "bx-tok" in tokens
        table, csv_file, json_file = client.predict([img, handle_file(png("b.png", (200, 0, 0)))], "a cat\na dog",
                                                    api_name="/batch")
        assert len(table["data"]) == 2 and open(csv_file).read().startswith("image,top prompt")
        bad = tmp_path / f"bad-{uuid.uuid4().hex}.png"
        bad.write_text("hello")
        calls = {"/predict": (handle_file(str(bad)), "a cat"),
                 "/compare": (img, "a cat", "", "", "", ""),
                 "/explain": (img, "a cat\na dog", "a frog", "total predictive entropy", "saliency", 4),
                 "/batch": ([handle_file(str(bad))], "a cat")}
        expected = {"/predict": f"{bad.name}: not a JPEG", "/compare": "at least 2", "/explain": "not among",
                    "/batch": f"{bad.name}: not a JPEG"}
        calls["/explain "] = (img, "a cat\na dog", "a cat", "the weather", "saliency", 4)
        expected["/explain "] = "unknown target"
        for name, args in calls.items():
            with pytest.raises(Exception, match=expected[name]) as err:
                client.predict(*args, api_name=name.strip())
            assert "/tmp" not in str(err.value) and "Traceback" not in str(err.value)
        assert not list(Path(get_upload_folder()).glob(f"*/{bad.name}"))  # refused uploads are deleted
        # a small PNG declaring 12000 x 12000 pixels is refused from its header, never decoded
        bomb = tmp_path / "bomb.png"
        bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 12000, 12000)
                         + b"\x08\x00\x00\x00\x00" + b"\x00" * 64)
        with pytest.raises(Exception, match="12000x12000 pixels exceeds"):
            client.predict(handle_file(str(bomb)), "a cat", api_name="/predict")
        huge = tmp_path / "huge.png"
        huge.write_bytes(b"\x89PNG" + bytes(MAX_UPLOAD_BYTES + 1))
        with pytest.raises(Exception, match="413|too large|exceed"):
            client.predict(handle_file(str(huge)), "a cat", api_name="/predict")
        assert "Traceback" not in capfd.readouterr().err  # user errors are not logged as crashes
        assert client.predict(img, "a cat\na dog", api_name="/predict")[3]["classes"][0]["prompt"] == "a cat"
    finally:
        app.close()


def test_long_label_sets_report_encoding_progress_to_the_page(tiny_vlm, png, monkeypatch):
    import time

    from gradio_client import Client, handle_file

    from bayesvlm_explain.encoding import PROGRESS_BATCHES

    encode = tiny_vlm.encoder.token_features

    def slow(tokens):  # a real text tower takes about a second per batch on a CPU
        time.sleep(0.3)
        return encode(tokens)

    monkeypatch.setattr(tiny_vlm.encoder, "token_features", slow)
    batches = PROGRESS_BATCHES + 1
    prompts = "\n".join(f"a drawing of thing {i}" for i in range(batches * tiny_vlm.batch_size))
    app = build_app(tiny_vlm)
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        job = Client(app.local_url, verbose=False).submit(handle_file(png()), prompts, api_name="/predict")
        seen = set()
        while not job.done():
            for unit in job.status().progress_data or []:
                seen.add((unit.desc, unit.length))
            time.sleep(0.02)
        assert len(job.result()[3]["classes"]) == batches * tiny_vlm.batch_size
        assert ("encoding prompts", batches) in seen
    finally:
        app.close()


def test_cli_predict_on_a_missing_file_says_not_found(tmp_path, capsys):
    from bayesvlm_explain.cli import main

    assert main(["predict", str(tmp_path / "nope.png"), "a cat", "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert "nope.png: file not found" in err and "JPEG" not in err


def test_cli_predict(tiny_vlm, tmp_path, monkeypatch, capsys):
    from bayesvlm_explain import cli

    monkeypatch.setattr(cli, "_load", lambda args: tiny_vlm)
    path = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (0, 0, 0)).save(path)
    assert cli.main(["predict", str(path), "a cat", "a dog"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t") == TABLE_HEADERS and len(lines) == 3
    (tmp_path / "bad.png").write_text("no image")
    assert cli.main(["predict", str(tmp_path / "bad.png"), "a cat"]) == 2
    assert "bad.png: not a JPEG" in capsys.readouterr().err


# -- Calibrate and Select (zip uploads) ---------------------------------------------------------------------
def _zip(path, members: dict[str, tuple[int, int, int] | bytes]) -> str:
    import io
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, color in members.items():
            if isinstance(color, bytes):
                zf.writestr(name, color)
                continue
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), color).save(buf, format="PNG")
            zf.writestr(name, buf.getvalue())
    return str(path)


LABELLED = {**{f"set/red_square/{i}.png": (180 + 10 * i, 20 * i, 10) for i in range(4)},
            **{f"set/blue_circle/{i}.png": (10, 30 * i, 160 + 20 * i) for i in range(4)},
            "set/blue_circle/broken.png": b"not an image"}


def counted(vlm: bx.BayesVLM, pairs: int = 40) -> bx.BayesVLM:
    """A view of ``vlm`` (left untouched) whose posterior, a copy, records ``pairs`` training pairs: what the
    Select tab's learner needs to update it with labels."""
    from bayesvlm_explain.evaluation.evaluate import with_posterior

    post = vlm.posterior.copy()
    for side in post.sides().values():
        side.num_pairs = pairs
    return with_posterior(vlm, post)


def test_calibrate_reports_the_library_evaluation_of_the_zip(tiny_vlm, tmp_path):
    from matplotlib.figure import Figure

    from bayesvlm_explain.evaluation.evaluate import evaluate

    z = _zip(tmp_path / "shapes.zip", LABELLED)
    out = tabs.calibrate.calibrate_archive(tiny_vlm, z, "a photo of a {}.")
    p = out.json
    assert isinstance(out.figure, Figure) and p["data"] == "shapes.zip" and p["images"] == 8
    assert p["classes"] == ["blue circle", "red square"] and p["refused"] == [
        "set/blue_circle/broken.png: not a JPEG, PNG, WebP, GIF or BMP image"]
    # the same images as a folder, through the library's evaluate: identical metrics
    folder = tmp_path / "folder"
    for name, color in LABELLED.items():
        if not isinstance(color, bytes):
            (folder / Path(name).parent.name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), color).save(folder / Path(name).parent.name / Path(name).name)
    ref = evaluate(tiny_vlm, folder, template="a photo of a {}.", predictive=views.RECOMMENDED,
                   num_samples=views.NUM_SAMPLES, progress=False).report
    assert p["rows"] == ref["rows"] and p["misclassification"] == ref["misclassification"]
    assert {r["method"] for r in p["rows"]} == {"deterministic", "bayes"} and "| bayes |" in out.summary
    assert str(tmp_path) not in str(p) and "/tmp" not in out.summary
    with pytest.raises(bx.InputError, match="template"):
        tabs.calibrate.calibrate_archive(tiny_vlm, z, "a photo")
    flat = _zip(tmp_path / "flat.zip", {"a.png": (1, 2, 3), "b.png": (4, 5, 6)})
    with pytest.raises(bx.InputError, match="flat.zip: expected one folder per class"):
        tabs.calibrate.calibrate_archive(tiny_vlm, flat, "a {}")


def test_calibrate_fits_the_scale_on_one_half_and_compares_on_the_other(tiny_vlm, tmp_path):
    from bayesvlm_explain.evaluation.calibrate import PSEUDO_COUNTS
    from bayesvlm_explain.evaluation.metrics import calibration_metrics

    members = {f"set/{'red_square' if i % 2 else 'blue_circle'}/{i:02d}.png": ((40 * i) % 256, 90, 200 - 7 * i)
               for i in range(12)}
    z = _zip(tmp_path / "twelve.zip", members)
    n0 = tiny_vlm.posterior.image.pseudo_count
    out = tabs.calibrate.calibrate_archive(tiny_vlm, z, "a photo of a {}.", fit_n=True)
    fit = out.json["scale_fit"]
    assert fit["pseudo_count"] in PSEUDO_COUNTS and (fit["fitted_on"], fit["compared_on"]) == (6, 6)
    assert fit["before"]["pseudo_count"] == n0 and fit["after"]["pseudo_count"] == fit["pseudo_count"]
    assert tiny_vlm.posterior.image.pseudo_count == n0  # the shared model is untouched
    assert out.summary.startswith("**Posterior scale fitted on 6 images") and "| after |" in out.summary
    # the after-row is the refitted posterior's predictive on the held-out half, recomputed independently
    import torch

    ordered = sorted(members, key=lambda m: (m.split("/")[1], m))  # class folders, then files, sorted
    images = [Image.new("RGB", (32, 32), members[m]) for m in ordered]
    labels = torch.tensor([0 if "/blue_circle/" in m else 1 for m in ordered])
    held = torch.randperm(12, generator=torch.Generator().manual_seed(0))[6:]
    view = tiny_vlm.with_pseudo_count(fit["pseudo_count"])
    prompts = ["a photo of a blue circle.", "a photo of a red square."]
    pred = view.predict([images[int(i)] for i in held], prompts, predictive=views.RECOMMENDED,
                        num_samples=views.NUM_SAMPLES, seed=0)
    expected = calibration_metrics(pred.probs, labels[held])
    assert fit["after"]["nlpd"] == pytest.approx(expected["nlpd"], rel=1e-5)
    few = _zip(tmp_path / "few.zip", dict(list(members.items())[:8]))
    with pytest.raises(bx.InputError, match="at least 10"):
        tabs.calibrate.calibrate_archive(tiny_vlm, few, "a photo of a {}.", fit_n=True)


def test_select_ranks_the_pool_by_joint_draws(tiny_vlm, tmp_path):
    import torch

    from bayesvlm_explain.selection import bald, epig, predictive_entropy

    colors = [(25 * i, 255 - 25 * i, (70 * i) % 256) for i in range(7)]
    pool = _zip(tmp_path / "pool.zip", {f"p{i}.png": c for i, c in enumerate(colors)})
    prompts = "a red square\na blue circle\na green leaf"
    out = tabs.select.select_archive(tiny_vlm, pool, prompts)
    p = out.json
    assert p["images"] == 7 and p["targets"] == 7 and p["target_source"] == "the pool"
    # reference: the library's functions on one joint draw of the pool followed by itself as targets
    feats = tiny_vlm.encode_images([Image.new("RGB", (32, 32), c) for c in colors])
    both = bx.Features(torch.cat([feats.activations] * 2), torch.cat([feats.embeddings] * 2))
    probs = torch.softmax(tiny_vlm.sample_logits_features(both, tiny_vlm.encode_prompts(prompts.splitlines()),
                                                          views.SELECT_SAMPLES, torch.Generator().manual_seed(0)), -1)
    ref = {"entropy": predictive_entropy(probs[:, :7]), "bald": bald(probs[:, :7]),
           "epig": epig(probs[:, :7], probs[:, 7:])}
    by_name = {e["image"]: e for e in p["scores"]}
    for k, v in ref.items():
        assert [by_name[f"p{i}.png"][k] for i in range(7)] == pytest.approx(v.tolist(), rel=1e-9, abs=1e-12)
        assert p["ranking"][k] == [f"p{int(i)}.png" for i in torch.sort(v, descending=True, stable=True).indices]
    assert p["learner"] == {"ran": False} and "no learner ran" in out.summary
    assert all(0 <= e["bald"] <= e["entropy"] + 1e-12 and e["epig"] >= 0 for e in p["scores"])
    assert max(e["epig"] for e in p["scores"]) > 1e-4  # joint draws: EPIG is not collapsed to zero
    assert [r[1] for r in out.rows] == p["ranking"]["entropy"] and len(out.rows[0]) == len(
        views.SELECT_HEADERS)
    lines = out.csv.splitlines()
    assert lines[0].split(",") == views.SELECT_CSV_HEADERS and len(lines) == 8
    targets = _zip(tmp_path / "targets.zip", {"t/a.png": (0, 0, 0), "t/b.png": (255, 255, 255)})
    with_targets = tabs.select.select_archive(tiny_vlm, pool, prompts, targets).json
    assert with_targets["targets"] == 2 and with_targets["target_source"] == "targets.zip"
    # the pool's own scores do not depend on the targets (up to float rounding: the joint draw is larger)
    assert [e["entropy"] for e in with_targets["scores"]] == pytest.approx([e["entropy"] for e in p["scores"]],
                                                                          rel=1e-12)
    assert [e["epig"] for e in with_targets["scores"]] != [e["epig"] for e in p["scores"]]
    with pytest.raises(bx.InputError, match="at least 2 class prompts"):
        tabs.select.select_archive(tiny_vlm, pool, "a cat")


def test_calibrate_and_select_served(tiny_vlm, tmp_path, capfd):
    from gradio_client import Client, handle_file

    vlm = counted(tiny_vlm)  # the learner updates a posterior that records its pairs
    app = build_app(vlm)
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.local_url, verbose=False)
        z = _zip(tmp_path / "shapes.zip", LABELLED)
        summary, plot, payload = client.predict(handle_file(z), "a photo of a {}.", api_name="/calibrate")
        assert payload["images"] == 8 and payload["classes"] == ["blue circle", "red square"] and plot
        # /select: pool, prompts, EPIG targets, labelled zip, prior weight, steps, lr, then the posterior scale
        summary, table, csv_file, sel = client.predict(handle_file(z), "a red square\na blue circle", None, None,
                                                       0.01, 100, 0.01, None, api_name="/select")
        assert sel["images"] == 8 and len(table["data"]) == 8 and table["headers"] == views.SELECT_HEADERS
        assert open(csv_file).read().startswith("image,folder,entropy") and sel["learner"] == {"ran": False}
        pool = _zip(tmp_path / "pool.zip", {f"p{i}.png": (25 * i, 255 - 25 * i, (70 * i) % 256) for i in range(5)})
        summary, table, csv_file, sel = client.predict(handle_file(pool), "a red square\na blue circle", None,
                                                       handle_file(z), 0.01, 30, 0.01, None, api_name="/select")
        direct = tabs.select.select_archive(vlm, pool, "a red square\na blue circle", None, z, 0.01, 30, 0.01)
        assert sel["learner"]["ran"] and sel["learner"]["labels"] == 8 and sel["learner"]["steps"] == 30
        assert sel["ranking"] == direct.json["ranking"] and "adapted model" in summary
        assert [e["epig"] for e in sel["scores"]] == pytest.approx([e["epig"] for e in direct.json["scores"]])
        with pytest.raises(Exception, match="shapes.zip: class folder 'blue circle' matches no prompt"):
            client.predict(handle_file(pool), "a cat\na dog", None, handle_file(z), 0.01, 30, 0.01, None,
                           api_name="/select")
        with pytest.raises(Exception, match="lr must be"):
            client.predict(handle_file(pool), "a cat\na dog", None, None, 0.01, 30, 5.0, None, api_name="/select")
        evil = tmp_path / "evil.zip"
        import zipfile

        with zipfile.ZipFile(evil, "w") as zf:
            zf.writestr("../../escape.png", b"x")
        for name, args in {"/calibrate": (handle_file(str(evil)), "a {}"),
                           "/select": (handle_file(str(evil)), "a cat\na dog", None, None, 0.01, 100, 0.01)
                           }.items():
            with pytest.raises(Exception, match="evil.zip: entry .* '..' path component") as err:
                client.predict(*args, api_name=name)
            assert "/tmp" not in str(err.value) and "Traceback" not in str(err.value)
        assert "Traceback" not in capfd.readouterr().err
    finally:
        app.close()
