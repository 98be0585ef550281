"""Delivery: the built wheel works outside the checkout, the import stays light, the studio CLI's port check.

The wheel test builds with ``pip wheel --no-build-isolation`` (setuptools from the test extra; no network),
installs non-editable into a fresh ``--target`` folder and runs from a directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bayesvlm_explain import cli

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("gradio", "captum", "matplotlib", "transformers", "webdataset", "resvg_py")
SOURCE_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                       ".pytest_cache", ".ruff_cache", ".cache", "tests", "benchmarks")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BAYESVLM_BUNDLED_DIR")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", **extra)
    return env


def test_import_does_not_load_heavy_packages():
    code = "import sys, bayesvlm_explain; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env=_env(PYTHONPATH=str(REPO)))
    loaded = set(json.loads(out.stdout.replace("'", '"')))
    assert "bayesvlm_explain" in loaded and "torch" in loaded
    assert loaded.isdisjoint(HEAVY), loaded & set(HEAVY)


def test_studio_names_port_when_taken(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        assert cli.main(["studio", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port}" in err and "--port" in err


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    src, dist, site, elsewhere = (tmp_path / n for n in ("src", "dist", "site", "elsewhere"))
    shutil.copytree(REPO, src, ignore=SOURCE_IGNORE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(dist)], check=True,
                   env=_env())
    (wheel,) = dist.glob("bayesvlm_explain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("bundled/open_clip_model.safetensors", "bundled/tokenizer/tokenizer.json",
                   "bundled/posterior/posterior.safetensors", "bundled/ATTRIBUTION.md", "examples/examples.json",
                   "posteriors/ViT-B-32__laion2b_s34b_b79k/posterior.safetensors",
                   "posteriors/ViT-B-32__laion2b_s34b_b79k/LICENSE"):
        assert f"bayesvlm_explain/pretrained/{needed}" in names, needed
    assert not any(n.startswith(("assets/", "tests/", "tools/", "scripts/", "benchmarks/")) or "/_build/" in n
                   for n in names)  # the library only: no build or benchmark tools
    assert wheel.stat().st_size < 25 * 2**20
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, env=_env())

    elsewhere.mkdir()
    code = """
import json, bayesvlm_explain as bx
vlm = bx.BayesVLM.from_pretrained("bundled", device="cpu")
from bayesvlm_explain.pretrained import package_path
img = package_path("examples", "02_frog_fluent-flat.png")
pred = vlm.predict([img], ["an emoji of frog", "an emoji of grapes"])
post = bx.Posterior.from_pretrained("ViT-B-32", "laion2b_s34b_b79k")
print(json.dumps({"file": bx.__file__, "probs": pred.probs[0].tolist(), "has_posterior": vlm.posterior is not None,
                  "dims": [post.image.dim_in, post.image.dim_out, post.text.dim_in, post.text.dim_out],
                  "lam": post.image.prior_precision, "image": str(img)}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere,
                         env=_env(PYTHONPATH=str(site)))
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(res["file"]).is_relative_to(site)
    assert res["has_posterior"] and res["probs"][0] > 0.9
    assert res["dims"] == [768, 512, 512, 512] and 3000 < res["lam"] < 3200

    script = site / "bin" / "bayesvlm-explain"
    out = subprocess.run([sys.executable, str(script), "predict", res["image"], "an emoji of frog",
                          "an emoji of grapes"], capture_output=True, text=True, cwd=elsewhere,
                         env=_env(PYTHONPATH=str(site)))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].split("\t")[0] == "prompt" and len(lines) == 3
    assert {line.split("\t")[0] for line in lines[1:]} == {"an emoji of frog", "an emoji of grapes"}
