"""``evaluate``: labelled-image readers, feature cache, metrics against independent computations, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bayesvlm_explain.cli import main
from bayesvlm_explain.evaluation.evaluate import (
    EvaluationError,
    evaluate,
    misclassification_rows,
    open_labeled,
    write_report,
)
from bayesvlm_explain.evaluation.figures import reliability_diagram
from bayesvlm_explain.evaluation.metrics import calibration_metrics, selective_accuracy

CLASSES = ("red_thing", "green thing", "blue-thing")
COLOURS = ((220, 30, 30), (30, 200, 40), (20, 40, 230))


def make_folder(root, per_class: int = 3, corrupt: bool = True):
    """``root/<class>/<i>.png``: noisy solid colours, plus one corrupt PNG and a stray text file."""
    rng = np.random.default_rng(0)
    for name, rgb in zip(CLASSES, COLOURS, strict=True):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(np.array(rgb) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    if corrupt:
        (root / CLASSES[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        (root / CLASSES[1] / "notes.txt").write_text("not an image")
    return root


def test_folder_metrics_cache_and_skips(tiny_vlm, tmp_path):
    folder = make_folder(tmp_path / "data")
    before = (tiny_vlm.posterior.image.pseudo_count, tiny_vlm.posterior.image.prior_precision)
    result = evaluate(tiny_vlm, folder, template="a photo of a {}.", cache_dir=tmp_path / "cache", progress=False)
    payload = result.report
    assert set(result.probs) == {"deterministic", "bayes (probit)"} and result.labels.shape == (9,)
    assert payload["images"] == 9
    assert payload["skipped"] == {"bad_image": 1, "not_an_image": 1}
    assert payload["classes"] == ["blue-thing", "green thing", "red thing"]  # sorted folders, _ as space
    # independent path: the model's own predict on the decoded images
    images, labels = [], []
    for i, name in enumerate(sorted(CLASSES)):
        for j in range(3):
            images.append(Image.open(folder / name / f"{j}.png"))
            labels.append(i)
    prompts = [f"a photo of a {c}." for c in payload["classes"]]
    pred = tiny_vlm.predict(images, prompts)
    labels = torch.tensor(labels)
    by_method = {r["method"]: r for r in payload["rows"]}
    for method, probs in (("deterministic", pred.map_probs), ("bayes", pred.probs)):
        ref = calibration_metrics(probs, labels, 20)
        for key in ("accuracy", "ece", "nlpd", "brier"):
            assert by_method[method][key] == pytest.approx(ref[key], abs=1e-4)  # float32 feature cache
    assert not payload["cache"]["hit"]
    again = evaluate(tiny_vlm, folder, template="a photo of a {}.", cache_dir=tmp_path / "cache", progress=False).report
    assert again["cache"]["hit"] and again["rows"] == payload["rows"] and again["skipped"] == payload["skipped"]
    other = evaluate(tiny_vlm, folder, template="a photo of a {}.", cache_dir=tmp_path / "cache", progress=False,
                     pseudo_count=50.0).report
    assert other["cache"]["hit"] and other["settings"]["pseudo_count"]["image"] == 50.0
    assert other["rows"][1]["nlpd"] != payload["rows"][1]["nlpd"]
    assert (tiny_vlm.posterior.image.pseudo_count, tiny_vlm.posterior.image.prior_precision) == before
    out = write_report(result, tmp_path / "out")
    saved = json.loads(out.read_text())
    assert saved["rows"] == payload["rows"] and (tmp_path / "out" / "reliability.png").stat().st_size > 0
    assert "| bayes | neg_bald |" in (tmp_path / "out" / "evaluation.md").read_text()


def test_changed_image_invalidates_cache(tiny_vlm, tmp_path):
    folder = make_folder(tmp_path / "data", per_class=1, corrupt=False)
    first = evaluate(tiny_vlm, folder, cache_dir=tmp_path / "cache", progress=False).report
    Image.new("RGB", (40, 40), (0, 0, 0)).save(folder / CLASSES[0] / "0.png")
    second = evaluate(tiny_vlm, folder, cache_dir=tmp_path / "cache", progress=False).report
    assert not second["cache"]["hit"] and second["cache"]["path"] != first["cache"]["path"]


def test_captions_csv_matches_folder(tiny_vlm, tmp_path):
    folder = make_folder(tmp_path / "data", corrupt=False)
    rows = ["path,caption"] + [f"{c}/{i}.png,{c.replace('_', ' ')}" for c in CLASSES for i in range(3)]
    rows.append("red_thing/0.png,purple thing")  # a label outside the class names: counted
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    names = ["red thing", "green thing", "blue-thing"]
    a = evaluate(tiny_vlm, folder, classnames=names, progress=False).report
    b = evaluate(tiny_vlm, folder / "labels.csv", classnames=names, progress=False).report
    assert b["skipped"] == {"unknown_label": 1} and a["skipped"] == {}
    for ra, rb in zip(a["rows"], b["rows"], strict=True):
        # the same images in another order: float32 encodings may differ in the last bit
        assert ra["accuracy"] == rb["accuracy"] and ra["nlpd"] == pytest.approx(rb["nlpd"], rel=1e-6)


def test_bad_folders_raise_clear_errors(tmp_path):
    folder = make_folder(tmp_path / "data", per_class=1, corrupt=False)
    with pytest.raises(EvaluationError, match=r"folders without a class name \['blue-thing'\].*"
                                              r"class names without a folder \['cyan thing'\]"):
        open_labeled(folder, ["red thing", "green thing", "cyan thing"])
    (folder / "empty_class").mkdir()
    with pytest.raises(EvaluationError, match="empty_class holds no image"):
        open_labeled(folder)


def test_misclassification_scores_against_definitions():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 5, generator=gen) * 2
    labels = torch.randint(0, 5, (200,), generator=gen)
    probs = torch.softmax(logits, -1)
    bald = torch.rand(200, generator=gen)
    rows = {(r["method"], r["score"]): r for r in misclassification_rows(probs, probs, labels, bald)}
    conf = probs.max(-1).values.numpy()
    ok = (probs.argmax(-1) == labels).numpy()
    pos, neg = conf[ok], conf[~ok]  # AUROC = P(score of a correct > score of a wrong), ties count half
    ref = ((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
    assert rows[("deterministic", "max_prob")]["auroc"] == pytest.approx(ref, abs=1e-6)
    assert rows[("bayes", "neg_bald")]["auroc"] == pytest.approx(
        ((-bald.numpy()[ok])[:, None] > (-bald.numpy()[~ok])[None]).mean(), abs=1e-6)
    top = np.argsort(-conf, kind="stable")[:100]
    assert rows[("bayes", "max_prob")]["selective_accuracy_50"] == pytest.approx(ok[top].mean())
    assert selective_accuracy(torch.tensor([0.9, 0.1, 0.8, 0.2]), torch.tensor([True, True, False, False]),
                              0.5) == 0.5


def test_reliability_diagram_draws_both_methods(tiny_vlm, tmp_path):
    probs = torch.softmax(torch.randn(30, 3, generator=torch.Generator().manual_seed(0)), -1)
    fig = reliability_diagram({"deterministic": probs, "bayes": probs}, torch.zeros(30, dtype=torch.long), n_bins=20)
    assert len(fig.axes[0].get_legend().get_texts()) == 3


def test_cli_evaluate(tmp_path, capsys):
    folder = make_folder(tmp_path / "data", per_class=2)
    (tmp_path / "names.txt").write_text("red thing\ngreen thing\nblue thing\n")
    rc = main(["evaluate", "--data", str(folder), "--classnames", str(tmp_path / "names.txt"),
               "--template", "an emoji of {}", "--out", str(tmp_path / "out"), "--mc-samples", "50"])
    assert rc == 0
    payload = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert payload["images"] == 6 and payload["skipped"]["bad_image"] == 1 and payload["model"] == "bundled"
    assert "features computed" in capsys.readouterr().out
    (tmp_path / "names.txt").write_text("red thing\ngreen thing\n")
    assert main(["evaluate", "--data", str(folder), "--classnames", str(tmp_path / "names.txt"),
                 "--out", str(tmp_path / "out2")]) == 2
    assert "folders without a class name ['blue-thing']" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(folder), "--template", "no slot", "--out", str(tmp_path / "o3")]) == 2
    assert "exactly once" in capsys.readouterr().err
