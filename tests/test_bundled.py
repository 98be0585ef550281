"""Tests for the bundled offline model (committed assets only) and the pure parts of the emoji pipeline.

Nothing here needs the network or the rendered cache.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from bayesvlm_explain import bundled
from bayesvlm_explain.data.labels import PROMPT_TEMPLATE, LabelSpaceError, load_label_space
from tools import emoji

REPO = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO / "bayesvlm_explain" / "pretrained" / "examples"

# The shipped model (trained without the held-out calibration / test renders) ranks the true class first
# among the 93 classes for 5 of the 8 committed examples and within the top 4 for all 8 (measured at
# release; 4 of the examples are held-out renders). Its clean top-1 is 41 % on the test renders and 71 %
# on the label-space classes' training renders (training.json), so the test asks for 4 of 8 first and
# all 8 in the top 5.
MIN_EXAMPLES_TOP1 = 4


@pytest.fixture(scope="module")
def loaded(monkeypatch_module):
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch_module.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch_module.delenv("BAYESVLM_BUNDLED_DIR", raising=False)
    return bundled.load_bundled()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return json.loads((EXAMPLES_DIR / "examples.json").read_text())["examples"]


# ------------------------------------------------------------------------------------ bundled model


def test_bundled_dir_and_files():
    assert bundled.BUNDLED_DIR == REPO / "bayesvlm_explain" / "pretrained" / "bundled"
    for name in ("open_clip_config.json", "open_clip_model.safetensors", "ATTRIBUTION.md", "training.json"):
        assert (bundled.BUNDLED_DIR / name).is_file(), name
    size_mb = (bundled.BUNDLED_DIR / "open_clip_model.safetensors").stat().st_size / 2**20
    assert size_mb <= 20.5
    cfg = json.loads((bundled.BUNDLED_DIR / "open_clip_config.json").read_text())
    assert not Path(cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"]).is_absolute()
    assert Path(bundled.bundled_config()["model_cfg"]["text_cfg"]["hf_tokenizer_name"]).is_dir()


def test_bundled_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("BAYESVLM_BUNDLED_DIR", str(tmp_path))
    assert bundled.bundled_dir() == tmp_path.resolve()


def test_loads_offline_and_architecture(loaded):
    import open_clip

    model, tokenizer, preprocess = loaded
    assert type(model) is open_clip.CLIP
    assert not model.training
    assert isinstance(model.text_projection, torch.nn.Parameter)
    assert isinstance(model.visual.proj, torch.nn.Parameter)
    cfg = json.loads((bundled.BUNDLED_DIR / "open_clip_config.json").read_text())["model_cfg"]
    d = cfg["embed_dim"]
    assert model.visual.proj.shape == (cfg["vision_cfg"]["width"], d)
    assert model.text_projection.shape == (cfg["text_cfg"]["width"], d)
    assert cfg["text_cfg"]["pool_type"] == "eos"
    assert 128 <= d <= 256
    n_params = sum(p.numel() for p in model.parameters())
    assert 1e6 < n_params < 10e6


def test_tokenizer_eos_matches_config(loaded):
    model, tokenizer, _ = loaded
    cfg = json.loads((bundled.BUNDLED_DIR / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    tokens = tokenizer(["an emoji of dog face", "grinning face, happy, smile"])
    assert tokens.shape == (2, cfg["context_length"])
    assert tokens.dtype == torch.long
    assert int(tokens.max()) < cfg["vocab_size"]
    # every sequence carries exactly one EOS token, which the 'eos' pooling picks
    assert ((tokens == cfg["eos_id"]).sum(1) == 1).all()
    assert (tokens[:, -1] == cfg["pad_id"]).all()


def test_embedding_shapes(loaded, examples):
    model, tokenizer, preprocess = loaded
    img = preprocess(Image.open(EXAMPLES_DIR / examples[0]["file"]))
    size = model.visual.image_size
    assert img.shape == (3, *((size, size) if isinstance(size, int) else size))
    with torch.no_grad():
        fi = model.encode_image(img[None], normalize=True)
        ft = model.encode_text(tokenizer(["an emoji of a cat", "an emoji of pizza"]), normalize=True)
    d = model.text_projection.shape[1]
    assert fi.shape == (1, d) and ft.shape == (2, d)
    assert torch.allclose(fi.norm(dim=-1), torch.ones(1), atol=1e-4)
    assert torch.isfinite(ft).all()


def test_examples_ranked_first(loaded, examples):
    model, tokenizer, preprocess = loaded
    bench = load_label_space()
    with torch.no_grad():
        txt = model.encode_text(tokenizer(bench.prompts()), normalize=True)
        x = torch.stack([preprocess(Image.open(EXAMPLES_DIR / e["file"])) for e in examples])
        img = model.encode_image(x, normalize=True)
    logits = img @ txt.T
    pred = logits.argmax(1).tolist()
    hits = [bench.labels[p] == e["label"] for p, e in zip(pred, examples, strict=True)]
    assert sum(hits) >= MIN_EXAMPLES_TOP1, list(zip([bench.labels[p] for p in pred], examples, strict=True))
    top5 = logits.topk(5, dim=1).indices.tolist()
    assert all(bench.labels.index(e["label"]) in t for t, e in zip(top5, examples, strict=True))


def test_examples_are_permissive_benchmark_classes(examples):
    bench = load_label_space()
    assert 6 <= len(examples) <= 10
    for e in examples:
        assert e["style"] in emoji.TRAIN_STYLES
        assert e["label"] in bench.labels
        with Image.open(EXAMPLES_DIR / e["file"]) as im:
            assert im.format == "PNG" and 64 <= im.width <= 128 and im.mode == "RGB"


# ------------------------------------------------------------------------ runtime vs build-time code


def test_import_needs_no_build_tooling():
    """``import bayesvlm_explain`` (and its label space) loads neither the build package nor resvg."""
    code = ("import sys, bayesvlm_explain, bayesvlm_explain.data.labels as lb; lb.load_label_space(); "
            "print(sorted(m for m in sys.modules if m.startswith(('resvg', 'tools'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_label_space_round_trip_and_bad_file(tmp_path):
    concepts = [_concept("dog face", key="1f436"), _concept("cat face", key="1f431", order=1)]
    path = emoji.write_label_space(concepts, tmp_path / "labels.json", note="test")
    space = load_label_space(path)
    assert space.keys == ("1f436", "1f431") and space.labels == ("dog face", "cat face")
    assert space.prompts() == ["an emoji of dog face", "an emoji of cat face"] and len(space) == 2
    (tmp_path / "bad.json").write_text('{"classes": [{"key": "1f436"}]}')
    with pytest.raises(LabelSpaceError, match=r"bad\.json: not a label space \(KeyError"):
        load_label_space(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(LabelSpaceError, match=r"broken\.json: not a label space \(JSONDecodeError"):
        load_label_space(tmp_path / "broken.json")


# ---------------------------------------------------------------------------- emoji pipeline (pure)


def _concept(label="dog face", tags=("dog", "pet", "puppy"), subgroup="animal-mammal", key="1f436", order=0):
    return emoji.Concept(key=key, emoji="?", label=label, tags=tags, group="animals & nature",
                         subgroup=subgroup, order=order)


def test_styles_partition_and_licences():
    assert set(emoji.TRAIN_STYLES) == {"noto", "twemoji", "fluent-flat"}
    assert not set(emoji.TRAIN_STYLES) & set(emoji.SHIFT_STYLES)
    assert set(emoji.TRAIN_STYLES) | set(emoji.SHIFT_STYLES) == set(emoji.EMOJI_STYLES)
    for name in emoji.TRAIN_STYLES:
        assert "SA" not in emoji.EMOJI_STYLES[name].licence
    for name in ("openmoji", "openmoji-black", "emojione"):
        assert emoji.EMOJI_STYLES[name].split == "shift"
    assert not any("apple" in s or "facebook" in s for s in emoji.EMOJI_STYLES)


def test_lockfile_pins_every_package():
    pkg = json.loads((emoji.SOURCES_DIR / "package.json").read_text())
    lock = json.loads((emoji.SOURCES_DIR / "package-lock.json").read_text())
    deps = pkg["dependencies"]
    for info in emoji.EMOJI_STYLES.values():
        assert info.package in deps
    assert "emojibase-data" in deps
    for name, version in deps.items():
        assert version[0].isdigit(), f"{name} is not pinned: {version}"
        entry = lock["packages"][f"node_modules/{name}"]
        assert entry["version"] == version and entry["integrity"].startswith("sha512-")


def test_normalise_hexcode_and_slugify():
    assert emoji.normalise_hexcode("2764-FE0F") == "2764"
    assert emoji.normalise_hexcode("1F468-200D-1F692") == "1f468-200d-1f692"
    assert emoji.slugify("one o’clock") == "one-o-clock"
    assert emoji.slugify("flag: Germany") == "flag-germany"


def test_captions():
    c = _concept()
    assert emoji.build_caption(c) == "an emoji of dog face"
    assert emoji.build_caption(c, "{label}, {tags}") == "dog face, dog, pet, puppy"
    variants = emoji.caption_variants(c)
    assert variants[0] == "an emoji of dog face" and all("dog face" in v for v in variants)
    assert "animal mammal" in variants[-1]
    rng = random.Random(0)
    caps = [emoji.sample_caption(c, rng) for _ in range(200)]
    assert all("dog face" in s for s in caps)
    assert 0.35 < caps.count("an emoji of dog face") / len(caps) < 0.75
    assert caps == [emoji.sample_caption(c, r) for r in [random.Random(0)] for _ in range(200)]


def test_crop_to_alpha_bbox_and_flatten():
    img = Image.new("RGBA", (100, 80), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (30, 10), (255, 0, 0, 255)), (50, 20))  # 30 x 10 red bar
    out = emoji.crop_to_alpha_bbox(img, margin=0.1)
    side = round(30 / 0.8)
    assert out.size == (side, side)
    bbox = out.getchannel("A").getbbox()
    assert bbox[2] - bbox[0] == 30 and bbox[3] - bbox[1] == 10
    assert abs((bbox[0] + bbox[2]) / 2 - side / 2) <= 1 and abs((bbox[1] + bbox[3]) / 2 - side / 2) <= 1
    flat = emoji.flatten_on_white(out)
    assert flat.mode == "RGB"
    assert flat.getpixel((0, 0)) == (255, 255, 255)
    assert flat.getpixel((side // 2, side // 2)) == (255, 0, 0)
    empty = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert emoji.crop_to_alpha_bbox(empty).size == (8, 8)


def test_to_line_art_and_svg_document():
    body = ('<path fill="#f4aa41" d="M0 0h1"/><path fill="none" stroke="#000" d="M1 1h1"/>'
            '<path d="M2 2h1"/><g style="fill:#ea5a47;stroke:#000000"><path fill="url(#g)"/></g>')
    out = emoji.to_line_art(body)
    assert '#f4aa41' not in out and "#ea5a47" not in out and "url(#g)" not in out
    assert 'stroke="#000"' in out and "stroke:#000000" in out and '<path d="M2 2h1"/>' in out
    doc = emoji.svg_document(out, (0.0, 0.0, 72.0, 72.0), 128)
    assert doc.startswith("<svg") and 'viewBox="0.0 0.0 72.0 72.0"' in doc and 'width="128"' in doc


def test_select_benchmark_concepts():
    cs = [
        _concept("red heart", (), "heart", "a", 0),
        _concept("orange heart", (), "heart", "b", 1),  # shares "heart" -> skipped
        _concept("kiss mark", (), "heart", "c", 2),
        _concept("hundred points", (), "heart", "d", 3),  # subgroup full
        _concept("man firefighter", (), "role", "e", 4),  # gendered -> skipped
        _concept("firefighter", (), "role", "f", 5),
        _concept("flag: Germany", (), "flag", "g", 6),  # ':' -> skipped
        _concept("rocket", (), "transport", "h", 7),  # missing in a required style -> skipped
    ]
    required = {"s1": {"a", "b", "c", "d", "e", "f", "g"}}
    chosen = emoji.select_benchmark_concepts(cs, required, per_subgroup=2)
    assert [c.label for c in chosen] == ["red heart", "kiss mark", "firefighter"]


def test_benchmark_classes():
    bench = load_label_space()
    assert 90 <= len(bench) <= 200  # 93: one concept per emojibase subgroup
    assert len(set(bench.labels)) == len(bench) == len(set(bench.keys))
    assert bench.template == PROMPT_TEMPLATE == "an emoji of {label}"
    assert bench.prompts()[0] == f"an emoji of {bench.labels[0]}"
    assert not any(":" in label for label in bench.labels)


# ---------------------------------------------------------------------------- splits and name matching


def test_held_out_renders_are_disjoint_balanced_and_seeded():
    keys = [f"k{i:03d}" for i in range(93)]
    held = emoji.held_out_renders(keys)
    cal, test = set(held["calibration"]), set(held["test"])
    assert len(cal) == 47 and len(test) == 46 and not cal & test
    held_keys = [rid.split("/", 1)[1] for rid in cal | test]
    assert sorted(held_keys) == keys  # one render per class, calibration and test hold different classes
    for ids in (cal, test):  # each training style held out about equally often in both splits
        counts = [sum(rid.startswith(f"{s}/") for rid in ids) for s in emoji.TRAIN_STYLES]
        assert max(counts) - min(counts) <= 1
    assert emoji.held_out_renders(keys) == held and emoji.held_out_renders(keys, seed=1) != held
    with pytest.raises(emoji.SplitError, match="unique"):
        emoji.held_out_renders(["a", "a"])


def test_split_records_keeps_held_out_renders_out_of_training():
    keys = ["a", "b", "c", "d"]
    records = [emoji.EmojiRecord("p", "cap", k, s, k) for s in emoji.TRAIN_STYLES for k in [*keys, "other"]]
    parts = emoji.split_records(records, keys)
    ids = {name: {emoji.render_id(r.style, r.key) for r in rs} for name, rs in parts.items()}
    held = emoji.held_out_renders(keys)
    assert ids["calibration"] == set(held["calibration"]) and ids["test"] == set(held["test"])
    assert not ids["train"] & (ids["calibration"] | ids["test"])
    assert sum(map(len, parts.values())) == len(records)
    assert {f"{s}/other" for s in emoji.TRAIN_STYLES} <= ids["train"]  # concepts outside the label space train
    with pytest.raises(emoji.SplitError, match="missing"):
        emoji.split_records([r for r in records if emoji.render_id(r.style, r.key) not in ids["test"]], keys)


def test_shipped_model_never_trained_on_held_out_renders():
    summary = json.loads((bundled.BUNDLED_DIR / "training.json").read_text())
    splits = summary["splits"]
    held = emoji.held_out_renders(load_label_space().keys, seed=splits["seed"])
    assert splits["held_out"] == held
    train = set(splits["train"])
    assert len(train) == summary["n_train_images"]
    assert not train & (set(held["calibration"]) | set(held["test"]))
    # every label-space class keeps its two other training-style renders
    for key in load_label_space().keys:
        assert sum(emoji.render_id(s, key) in train for s in emoji.TRAIN_STYLES) == 2


def _icon_sets(root: Path, sets: dict[str, tuple[list[str], dict[str, str]]]) -> Path:
    """A fake ``node_modules`` with iconify sets ``{package: (icon names, chars)}``."""
    for package, (names, chars) in sets.items():
        d = root / package
        d.mkdir(parents=True)
        icons = {n: {"body": f"<path d='M0 0h{i + 1}'/>"} for i, n in enumerate(names)}
        (d / "icons.json").write_text(json.dumps({"icons": icons, "width": 16, "height": 16}))
        if chars:
            (d / "chars.json").write_text(json.dumps(chars))
    return root


def test_name_keyed_match_refuses_names_that_mean_two_concepts(tmp_path):
    bird = _concept("turkey", (), "animal-bird", "1f983", 0)
    flag = _concept("flag: Turkey", (), "country-flag", "1f1f9-1f1f7", 1)
    dog = _concept("dog face", key="1f436", order=2)
    # a codepoint-keyed set calls the flag of Turkey "turkey"; the name-keyed set has one "turkey" icon
    sets = {s.package: ([], {}) for s in emoji.EMOJI_STYLES.values() if s.keyed_by == "codepoint"}
    sets["@iconify-json/noto"] = (["turkey", "dog-face"], {"1F1F9-1F1F7": "turkey", "1f436": "dog-face"})
    sets["@iconify-json/noto-v1"] = (["turkey", "dog-face"], {})
    modules = _icon_sets(tmp_path, sets)
    style = emoji.EMOJI_STYLES["noto-v1"]
    concepts = [bird, flag, dog]
    naive = {}  # without claims: the slug and the other set's name both reach the one icon
    assert emoji.name_collisions(concepts, style, modules, naive) == {"turkey": ["1f983", "1f1f9-1f1f7"]}
    claims = emoji.name_claims(concepts, modules)
    assert claims["turkey"] == {"1f983", "1f1f9-1f1f7"} and claims["dog-face"] == {"1f436"}
    assert emoji.icon_name(bird, style, modules, claims) is None
    assert emoji.icon_name(flag, style, modules, claims) is None
    assert emoji.icon_name(dog, style, modules, claims) == "dog-face"
    assert emoji.name_collisions(concepts, style, modules, claims) == {}
    assert emoji.icon_name(flag, emoji.EMOJI_STYLES["noto"], modules, claims) == "turkey"  # by codepoint: fine
