"""Loading a model never runs code shipped with it, nor unpickles its weights (issue 9 §1)."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file

import bayesvlm_explain as bx
from bayesvlm_explain.bundled import bundled_config, bundled_dir
from bayesvlm_explain.inputs import InputError
from bayesvlm_explain.loading import ModelFileError, check_config, code_loading_options

WEIGHTS = "open_clip_model.safetensors"


def _model_folder(tmp_path: Path, tokenizer_kwargs: dict | None = None, auto_map: bool = False) -> Path:
    """A ``local-dir`` copy of the bundled model; optionally with code-loading options and a module
    ``evil_tok.py`` that writes ``tmp_path / "MARKER"`` when imported."""
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    cfg = bundled_config()
    tok_dir = Path(cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"])
    for f in tok_dir.iterdir():
        shutil.copy(f, folder / f.name)
    shutil.copy(bundled_dir() / WEIGHTS, folder / WEIGHTS)
    cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "tokenizer"
    if tokenizer_kwargs is not None:
        cfg["model_cfg"]["text_cfg"]["tokenizer_kwargs"] = tokenizer_kwargs
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    if auto_map:
        tc = json.loads((folder / "tokenizer_config.json").read_text())
        tc["auto_map"] = {"AutoTokenizer": ["evil_tok.EvilTokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps(tc))
        (folder / "evil_tok.py").write_text(
            f"from pathlib import Path\nPath({str(tmp_path / 'MARKER')!r}).write_text('ran')\n"
            "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    return folder


def test_remote_code_config_is_refused_and_never_runs(tmp_path):
    folder = _model_folder(tmp_path, {"trust_remote_code": True}, auto_map=True)
    with pytest.raises(ModelFileError, match=r"tokenizer_kwargs\.trust_remote_code.*trust_remote_code=True"):
        bx.BayesVLM.from_pretrained(f"local-dir:{folder}", device="cpu")
    assert not (tmp_path / "MARKER").exists()
    assert issubclass(ModelFileError, InputError)  # the CLI reports it as a bad input (exit 2)


def test_auto_map_alone_is_inert(tmp_path):
    """Without the flag from the config, the tokenizer gets trust_remote_code=False and ignores auto_map."""
    folder = _model_folder(tmp_path, auto_map=True)
    vlm = bx.BayesVLM.from_pretrained(f"local-dir:{folder}", device="cpu")
    assert vlm.tokenize(["a smiling face"]).shape == (1, vlm.context_length)
    assert not (tmp_path / "MARKER").exists()


def test_explicit_opt_in_is_passed_to_the_tokenizer(tmp_path, monkeypatch):
    folder = _model_folder(tmp_path, {"trust_remote_code": True})
    seen = {}

    def fake_get_tokenizer(name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop before any tokenizer code is imported")

    monkeypatch.setattr(open_clip, "get_tokenizer", fake_get_tokenizer)
    with pytest.raises(RuntimeError, match="stop before"):
        bx.BayesVLM.from_pretrained(f"local-dir:{folder}", device="cpu", trust_remote_code=True)
    assert seen == {"trust_remote_code": True}
    seen.clear()  # and a config that does not ask gets an explicit False, so transformers never prompts
    plain = _model_folder(tmp_path / "p")
    with pytest.raises(RuntimeError, match="stop before"):
        bx.BayesVLM.from_pretrained(f"local-dir:{plain}", device="cpu")
    assert seen == {"trust_remote_code": False}


def test_code_loading_options_found_anywhere_in_a_config():
    cfg = {"model_cfg": {"text_cfg": {"tokenizer_kwargs": {"trust_remote_code": False}},
                         "extra": [{"auto_map": {"AutoModel": "m.M"}}]}}
    assert list(code_loading_options(cfg)) == ["model_cfg.extra[0].auto_map"]
    with pytest.raises(ModelFileError, match=r"config\.json asks to run code"):
        check_config(cfg, "config.json")
    check_config(cfg, "config.json", trust_remote_code=True)  # the caller's explicit choice


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled_weights_folder(tmp_path: Path, payload: bytes) -> Path:
    folder = _model_folder(tmp_path)
    (folder / WEIGHTS).unlink()
    (folder / "open_clip_pytorch_model.bin").write_bytes(payload)
    return folder


def test_pickled_weights_give_a_clear_error_not_unpickling_error(tmp_path):
    marker = tmp_path / "PWNED"
    buf = io.BytesIO()
    torch.save({"visual.proj": _Evil(marker)}, buf)
    folder = _pickled_weights_folder(tmp_path, buf.getvalue())
    with pytest.raises(ModelFileError, match=r"refusing the model weights open_clip_pytorch_model\.bin"):
        bx.BayesVLM.from_pretrained(f"local-dir:{folder}", device="cpu")
    shutil.rmtree(folder)
    folder = _pickled_weights_folder(tmp_path, pickle.dumps(_Evil(marker), protocol=2))  # a bare legacy pickle
    with pytest.raises(ModelFileError, match="convert it to .safetensors"):
        bx.BayesVLM.from_pretrained(f"local-dir:{folder}", device="cpu")
    assert not marker.exists()


def test_weights_that_make_the_safe_loader_raise_typeerror_are_refused(tmp_path):
    """open_clip retries a TypeError without weights_only; the file must never reach that retry."""
    buf = io.BytesIO()
    torch.save(torch.zeros(2), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        files = {n: z.read(n) for n in z.namelist()}

    class BadArgs:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, ())

    files[next(n for n in files if n.endswith("data.pkl"))] = pickle.dumps(BadArgs(), protocol=2)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    folder = _pickled_weights_folder(tmp_path, out.getvalue())
    with pytest.raises(ModelFileError, match="failed with TypeError"):
        bx.BayesVLM.from_pretrained(f"local-dir:{folder}", device="cpu")


def test_plain_tensor_checkpoint_still_loads(tmp_path):
    state = load_file(str(bundled_dir() / WEIGHTS))
    buf = io.BytesIO()
    torch.save(state, buf)
    folder = _pickled_weights_folder(tmp_path, buf.getvalue())
    vlm = bx.BayesVLM.from_pretrained(f"local-dir:{folder}", device="cpu")
    torch.testing.assert_close(vlm.model.visual.proj.detach(), state["visual.proj"].float())


def test_hub_config_asking_for_code_is_refused_before_anything_else_is_fetched(tmp_path, monkeypatch):
    folder = _model_folder(tmp_path, {"trust_remote_code": True})
    fetched = []

    def fake_download(model_id, filename=None, **kwargs):  # the hub, served from the folder
        fetched.append(filename)
        return str(folder / filename)

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", fake_download)
    with pytest.raises(ModelFileError, match=r"org/model/open_clip_config\.json asks to run code"):
        bx.BayesVLM.from_pretrained("hf-hub:org/model", device="cpu")
    assert fetched == ["open_clip_config.json"]


def test_hf_text_tower_config_naming_code_is_refused(tmp_path):
    folder = _model_folder(tmp_path)
    tower = folder / "text_tower"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "m.C"}}))
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["hf_model_name"] = str(tower)
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match=r"text_tower/config\.json asks to run code .* \(auto_map\)"):
        bx.BayesVLM.from_pretrained(f"local-dir:{folder}", device="cpu")
