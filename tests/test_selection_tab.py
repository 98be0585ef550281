"""The studio's Select tab: the paper's MAP-entropy score by the library's definition, and the library's learner
on a zip of labelled images (folders matched to prompts, knobs checked) before the pool is ranked."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_ui import LABELLED, _zip, counted

import bayesvlm_explain as bx
from bayesvlm_explain.selection import class_probabilities, map_entropy, pool_scores
from bayesvlm_explain.ui import tabs, views

PROMPTS = "a red square\na blue circle"


def test_select_tab_ranks_by_map_entropy_of_the_deterministic_prediction(tiny_vlm, tmp_path):
    colors = [(30 * i, 200 - 20 * i, (90 * i) % 256) for i in range(6)]
    pool = _zip(tmp_path / "pool.zip", {f"p{i}.png": c for i, c in enumerate(colors)})
    prompts = ["a red square", "a blue circle", "a green leaf"]
    out = tabs.select.select_archive(tiny_vlm, pool, "\n".join(prompts))
    feats = tiny_vlm.encode_images([Image.new("RGB", (32, 32), c) for c in colors])
    ref = map_entropy(class_probabilities(tiny_vlm.map_logits(feats, tiny_vlm.encode_prompts(prompts)),
                                          tiny_vlm.adapter.likelihood))
    by_name = {e["image"]: e for e in out.json["scores"]}
    got = torch.tensor([by_name[f"p{i}.png"]["map_entropy"] for i in range(6)], dtype=torch.float64)
    torch.testing.assert_close(got, ref.double(), rtol=1e-9, atol=1e-12)
    order = torch.sort(ref, descending=True, stable=True).indices
    assert out.json["ranking"]["map_entropy"] == [f"p{int(i)}.png" for i in order]
    assert "MAP entropy" in tabs.select.NOTE and "map_entropy" in out.json["ranking"]
    assert out.csv.splitlines()[0].count("map_entropy") >= 1


def _pool(tmp_path) -> tuple[str, list[Image.Image]]:
    colors = [(25 * i, 255 - 25 * i, (70 * i) % 256) for i in range(7)]
    return (_zip(tmp_path / "pool.zip", {f"p{i}.png": c for i, c in enumerate(colors)}),
            [Image.new("RGB", (32, 32), c) for c in colors])


def test_labelled_zip_runs_the_learner_and_the_pool_is_ranked_under_the_adapted_model(tiny_vlm, tmp_path):
    from bayesvlm_explain.evaluation.active_learning import fit_learner, map_accuracy
    from bayesvlm_explain.evaluation.evaluate import with_posterior

    post0 = tiny_vlm.posterior
    a0, lam0 = post0.image.A.clone(), post0.image.prior_precision
    vlm = counted(tiny_vlm)
    before_view = (vlm.posterior, vlm.posterior.image.A.clone(), vlm.posterior.image.num_pairs)
    pool, pool_images = _pool(tmp_path)
    labelled = _zip(tmp_path / "labelled.zip", LABELLED)
    plain = tabs.select.select_archive(vlm, pool, PROMPTS)
    out = tabs.select.select_archive(vlm, pool, PROMPTS, None, labelled)
    learner = out.json["learner"]
    assert learner["ran"] and learner["labels"] == 8 and learner["labelled"] == "labelled.zip"
    assert learner["folders"] == {"blue circle": "a blue circle", "red square": "a red square"}
    assert (learner["prior_weight"], learner["steps"], learner["lr"]) == views.LEARNER_KNOBS
    assert learner["support_accuracy_after"] >= learner["support_accuracy_before"]
    assert learner["support_accuracy_after"] == 1.0  # the learner fits its own 8 labels
    assert "Ranked under the adapted model" in out.summary and "labelled.zip/set/blue_circle/broken.png" in (
        out.json["refused"][0])
    # reference: the library's learner and scores, by hand, on the same images in the same order
    ordered = sorted((m for m in LABELLED if m.endswith(".png") and "broken" not in m),
                     key=lambda m: (m.split("/")[1], m))
    support = vlm.encode_images([Image.new("RGB", (32, 32), LABELLED[m]) for m in ordered])
    labels = torch.tensor([1 if "/blue_circle/" in m else 0 for m in ordered])
    txt = vlm.encode_prompts(PROMPTS.splitlines())
    state = fit_learner(vlm, support, labels, txt, views.LEARNER_KNOBS)
    assert learner["support_accuracy_after"] == map_accuracy(vlm, state.delta, support, labels, txt)
    assert learner["prior_precision_after"] == pytest.approx(state.posterior.image.prior_precision, rel=1e-9)
    shifted = state.shift(vlm, vlm.encode_images(pool_images))
    ref = pool_scores(with_posterior(vlm, state.posterior), shifted, txt, views.SELECT_SAMPLES,
                      torch.Generator().manual_seed(0), shifted)
    by_name = {e["image"]: e for e in out.json["scores"]}
    plain_by_name = {e["image"]: e for e in plain.json["scores"]}
    for k, v in ref.items():
        got = [by_name[f"p{i}.png"][k] for i in range(7)]
        assert got == pytest.approx(v.tolist(), rel=1e-6, abs=1e-9)
        # the learner changed the scores: they are not those of the model as loaded
        assert max(abs(g - plain_by_name[f"p{i}.png"][k]) for i, g in enumerate(got)) > 1e-3
    assert out.json["ranking"] != plain.json["ranking"]
    # neither the session model nor the view was modified
    assert tiny_vlm.posterior is post0 and post0.image.prior_precision == lam0 and post0.image.num_pairs is None
    assert torch.equal(post0.image.A, a0)
    assert vlm.posterior is before_view[0] and vlm.posterior.image.num_pairs == before_view[2]
    assert torch.equal(vlm.posterior.image.A, before_view[1])


def test_folders_map_to_prompts_by_name_then_by_whole_words():
    prompts = ["cat", "a photo of a cat", "a Red Square", "a caterpillar", "a red circle"]
    assert tabs.select.folder_prompts(["Cat", "red_square", "red-circle", "caterpillar"], prompts, "z.zip") == {
        "Cat": 0, "red_square": 2, "red-circle": 4, "caterpillar": 3}  # equality first, then whole words
    with pytest.raises(bx.InputError, match=r"z.zip: class folder 'dog' matches no prompt.*prompts: 'cat'; "):
        tabs.select.folder_prompts(["dog"], prompts, "z.zip")
    with pytest.raises(bx.InputError, match="class folder 'cater' matches no prompt"):  # not part of a word
        tabs.select.folder_prompts(["cater"], prompts, "z.zip")
    with pytest.raises(bx.InputError, match="class folder 'red' is ambiguous: it is in 'a Red Square', "
                                            "'a red circle'"):
        tabs.select.folder_prompts(["red"], prompts, "z.zip")


def test_labelled_zip_errors_name_the_folder_the_layout_or_the_posterior(tiny_vlm, tmp_path):
    vlm = counted(tiny_vlm)
    pool, _ = _pool(tmp_path)
    labelled = _zip(tmp_path / "labelled.zip", LABELLED)
    with pytest.raises(bx.InputError, match="labelled.zip: class folder 'red square' matches no prompt"):
        tabs.select.select_archive(vlm, pool, "a blue circle\na green leaf", None, labelled)
    flat = _zip(tmp_path / "flat.zip", {"a.png": (0, 0, 0), "b.png": (9, 9, 9)})
    with pytest.raises(bx.InputError, match="flat.zip: expected one folder per class"):
        tabs.select.select_archive(vlm, pool, PROMPTS, None, flat)
    with pytest.raises(bx.InputError, match="num_pairs"):  # the session model's posterior does not record it
        tabs.select.select_archive(tiny_vlm, pool, PROMPTS, None, labelled)


@pytest.mark.parametrize(("knobs", "message"), [
    ((-0.1, 100, 0.01), "prior weight must be between 0 and 1000"),
    ((float("nan"), 100, 0.01), "prior weight must be a finite number"),
    (("0.01", 100, 0.01), "prior weight must be a finite number"),
    ((0.01, 2.5, 0.01), "steps must be a whole number"),
    ((0.01, 5000, 0.01), "steps must be between 0 and 1000"),
    ((0.01, True, 0.01), "steps must be a finite number"),
    ((0.01, 100, 0.0), "lr must be between 1e-06 and 1"),
    ((0.01, 100, None), "lr must be a finite number"),
])
def test_learner_knobs_are_checked_and_named(tiny_vlm, tmp_path, knobs, message):
    with pytest.raises(bx.InputError, match=message):
        tabs.select.select_archive(tiny_vlm, "unused.zip", PROMPTS, None, None, *knobs)
    assert tabs.select.check_knobs(0, 0, 1.0) == (0.0, 0, 1.0)  # the ends of the ranges are allowed
    assert isinstance(tabs.select.check_knobs(0, 7.0, 1)[1], int)  # a JSON client's 7.0 steps is 7
