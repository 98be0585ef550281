"""Model assets (label set, template, yardstick, examples) and the ``yardstick`` command for any model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import random_posterior
from PIL import Image, ImageOps

import bayesvlm_explain as bx
from bayesvlm_explain.cli import main
from bayesvlm_explain.pretrained.assets import ModelAssets, load_assets
from bayesvlm_explain.pretrained.registry import BUNDLED, asset_spec
from bayesvlm_explain.ui.tabs.inspect import inspect_image
from bayesvlm_explain.yardstick import Yardstick, build_from_data


def class_folder(root, count: int = 16):
    """The shipped example images, mirrored and rotated, in two class folders (``count`` images)."""
    examples = bx.pretrained.registry.bundled_examples()
    out = root / "data"
    for i in range(count):
        img = Image.open(examples[i % len(examples)][0]).convert("RGB").rotate(15 * (i // len(examples)))
        img = ImageOps.mirror(img) if i % 3 == 0 else img
        (out / f"class_{i % 2}").mkdir(parents=True, exist_ok=True)
        img.save(out / f"class_{i % 2}" / f"{i:02d}.png")
    return out


def test_unknown_model_gets_empty_assets_and_the_studio_says_it_has_no_yardstick(tiny_vlm, tmp_path):
    assert isinstance(tiny_vlm.assets, ModelAssets) and tiny_vlm.assets.yardstick is None
    assets = load_assets(tiny_vlm, "not-a-registered-model")
    assert assets.labels is None and assets.prompts() is None and assets.examples == []
    assert "No yardstick" in assets.yardstick_note
    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.png")
    image = inspect_image(tiny_vlm, str(tmp_path / "x.png"), "a cat\na dog").json["image"]
    assert image["percentiles"] == {} and "No yardstick" in image["verdict"]


def test_registry_entries_for_the_bundled_model_and_vit_b_32():
    bundled = asset_spec(BUNDLED)
    assert bundled is not None and "emoji" in bundled.domain and bundled.template == "an emoji of {}"
    assert (bundled.posterior_dir() / "yardstick.json").is_file()
    vit = asset_spec("ViT-B-32", "LAION2B-S34B-B79K")  # the tag normalised like open_clip does
    assert vit is not None and vit.template == "a photo of a {}." and vit.labels is None
    assert not (vit.posterior_dir() / "yardstick.json").exists()  # none built yet


def test_yardstick_command_end_to_end_on_the_bundled_model(tmp_path, capsys):
    data = class_folder(tmp_path)
    post = tmp_path / "posterior"
    shutil.copytree(asset_spec(BUNDLED).posterior_dir(), post)
    (post / "yardstick.json").unlink()
    args = ["yardstick", "--data", str(data), "--posterior", str(post), "--out", str(post), "--device", "cpu",
            "--mc-samples", "64"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "yardstick.json" in out and "out-of-domain rule" in out
    vlm = bx.BayesVLM.from_pretrained(BUNDLED, posterior=post, device="cpu")
    ys = vlm.assets.yardstick
    assert isinstance(ys, Yardstick) and ys.prompts == ["an emoji of class 0", "an emoji of class 1"]
    assert ys.reference == "in-domain images data (13 images)"  # 16 minus the 20% held out for the flag rate
    assert ys.rule is not None and set(ys.rule.flag_rates) == {"in_domain"}
    assert [p.suffix for p in (post / "cache").iterdir()] == [".safetensors"]  # the feature cache (OUT/cache)
    image = inspect_image(vlm, str(data / "class_0" / "00.png"), "an emoji of frog\nan emoji of anchor",
                          ys).json["image"]
    assert set(image["percentiles"]) == {"epistemic", "input_scale", "entropy", "joint"}
    assert all(0.0 <= v <= 100.0 for v in image["percentiles"].values())


@pytest.fixture
def vit_b_32():
    import open_clip

    model = open_clip.create_model("ViT-B-32", pretrained=None)
    return bx.BayesVLM(model, open_clip.get_tokenizer("ViT-B-32"),
                       open_clip.image_transform(model.visual.image_size, is_train=False), device="cpu",
                       posterior=bx.Posterior.from_pretrained("ViT-B-32", "laion2b_s34b_b79k"),
                       name="ViT-B-32/laion2b_s34b_b79k", batch_size=8)


def test_yardstick_for_a_random_weight_vit_b_32_with_the_builtin_posterior(vit_b_32, tmp_path):
    data = class_folder(tmp_path, 10)
    ys = build_from_data(vit_b_32, data, num_samples=32, progress=False)
    assert ys.prompts == ["a photo of a class 0.", "a photo of a class 1."]
    ys.save(tmp_path)
    assets = load_assets(vit_b_32, "ViT-B-32", "laion2b_s34b_b79k", tmp_path)
    assert assets.yardstick is not None and assets.template == "a photo of a {}."
    image = inspect_image(vit_b_32, str(data / "class_1" / "01.png"), "a photo of a frog\na photo of a boat",
                          assets.yardstick).json["image"]
    assert set(image["percentiles"]) == {"epistemic", "input_scale", "entropy", "joint"}
    assert isinstance(image["out_of_domain"], bool)
    # another posterior (another λ) is refused, with the field named
    vit_b_32.posterior = random_posterior(vit_b_32, prior_precision=3.0)
    assert load_assets(vit_b_32, "ViT-B-32", "laion2b_s34b_b79k", tmp_path).yardstick is None


def test_bundled_model_ships_credited_photographs_outside_its_domain():
    vlm = bx.BayesVLM.from_pretrained(BUNDLED, device="cpu")
    photos = vlm.assets.outside_examples
    assert len(photos) == 4 and "photographs are outside what it knows" in vlm.assets.domain
    credits = (Path(photos[0][0]).parent / "ATTRIBUTION.md").read_text()
    labels = set(vlm.assets.labels or [])
    for path, prompts in photos:
        assert Path(path).name in credits and max(Image.open(path).size) <= 256
        assert all(line.removeprefix("an emoji of ") in labels for line in prompts.splitlines())
