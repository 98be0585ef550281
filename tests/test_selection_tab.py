"""The studio's Select tab offers the paper's MAP-entropy score, computed by the library's definition."""

from __future__ import annotations

import torch
from PIL import Image
from test_ui import _zip

from bayesvlm_explain.selection import class_probabilities, map_entropy
from bayesvlm_explain.ui import tabs


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
