"""End-to-end posterior fitting: factors, skips, resume, caches, WebDataset, two processes."""

from __future__ import annotations

import io
import math
import os
import tarfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_CLIP, build_tiny
from PIL import Image

import bayesvlm_explain as bx
from bayesvlm_explain.data.pairs import CaptionFile, PairSource
from bayesvlm_explain.estimation import output_factor_naive
from bayesvlm_explain.fitting import FitError, fit_posterior
from bayesvlm_explain.marglik import factor_eigenvalues, log_marginal_likelihood

N_GOOD = 36


def _make_folder(root: Path, n: int = N_GOOD, extras: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    rows: list[tuple[str, bytes]] = []
    for i in range(n):
        arr = (torch.rand(20, 20, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(arr).save(root / f"{i}.png")
        rows.append((f"{i}.png", f"a picture of thing {i}".encode()))
    if extras:
        (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        rows.insert(5, ("missing.png", b"a missing image"))
        rows.insert(9, ("broken.png", b"a corrupt image"))
        rows.insert(13, ("0.png", "caf\xe9 latin-1".encode("latin-1")))  # not UTF-8
        rows.insert(17, ("1.png", b"   "))
    with open(root / "captions.csv", "wb") as fh:
        fh.write(b"path,caption\n")
        for path, cap in rows:
            fh.write(path.encode() + b',"' + cap + b'"\n')
    return root


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return _make_folder(tmp_path / "data")


def _fit(vlm, data, cache, **kw):
    kw.setdefault("num_candidates", 16)
    kw.setdefault("shard_size", 8)
    return fit_posterior(vlm, data, batch_size=8, cache_dir=cache, progress=False, **kw)


def test_fit_counts_skips_and_matches_direct_factors(folder, tmp_path):
    vlm = build_tiny(TINY_CLIP)
    post, report = _fit(vlm, folder, tmp_path / "cache")
    # 40 items in class batches of 16: the last batch (items 32-39, 8 good pairs) is short and dropped
    assert report.num_items == N_GOOD + 4 and report.num_pairs == N_GOOD - 8
    assert report.skipped == {"missing_file": 1, "bad_image": 1, "bad_caption_encoding": 1, "empty_caption": 1,
                              "partial_class_batch": 8}
    assert report.num_pairs + sum(report.skipped.values()) == report.num_items
    # independent recomputation: encode the good pairs, rebuild class batches, naive per-sample Hessians
    good = [(folder / f"{i}.png", f"a picture of thing {i}") for i in range(N_GOOD)]
    img = vlm.encode_images([p for p, _ in good])
    txt = vlm.encode_prompts([c for _, c in good])
    # item order: 4 extras interleaved; class batches of 16 items: items 0-15, 16-31 (32-39 dropped)
    items = list(CaptionFile(folder))
    good_idx, k = [], 0
    for it in items:
        good_idx.append(k if it.problem is None and it.key.endswith(".png") and it.caption.strip()
                        and it.key != "broken.png" and _utf8(it.caption) else None)
        k += good_idx[-1] is not None
    b_img = torch.zeros(16, 16, dtype=torch.float64)
    used = []
    for j in range(2):
        rows = [g for g in good_idx[16 * j:16 * (j + 1)] if g is not None]
        used += rows
        b_img += output_factor_naive(img.embeddings[rows], txt.embeddings[rows], vlm.adapter.logit_scale)
    n = len(used)
    assert n == report.num_pairs
    a_img = img.activations[used].T @ img.activations[used]
    torch.testing.assert_close(post.image.A, a_img / math.sqrt(n), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(post.image.B, b_img / math.sqrt(n), rtol=1e-5, atol=1e-7)
    assert post.metadata["num_candidates"] == 16 and post.image.num_pairs == n
    # λ is the maximiser of the exact marginal likelihood
    lam = post.image.prior_precision
    theta = float(vlm.adapter.image.weight_with_bias().double().square().sum())
    ea, eb = factor_eigenvalues(post.image.A), factor_eigenvalues(post.image.B)
    f = [float(log_marginal_likelihood(ea, eb, 1.0, lam * r, theta)) for r in (0.98, 1.0, 1.02)]
    assert f[1] > f[0] and f[1] > f[2]


def _utf8(b) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class _Interrupted(PairSource):
    """Yields the first ``stop`` items of a source, then fails like a killed run."""

    def __init__(self, inner: PairSource, stop: int):
        self.inner, self.stop, self.description = inner, stop, inner.description

    def __iter__(self):
        for i, item in enumerate(self.inner):
            if i == self.stop:
                raise KeyboardInterrupt
            yield item


def test_resume_gives_identical_factors_without_recomputing(folder, tmp_path):
    vlm = build_tiny(TINY_CLIP)
    ref, _ = _fit(vlm, folder, tmp_path / "fresh")
    with pytest.raises(KeyboardInterrupt):
        _fit(vlm, _Interrupted(CaptionFile(folder), 27), tmp_path / "resumed")
    post, report = _fit(vlm, CaptionFile(folder), tmp_path / "resumed")
    assert report.shards_reused == 3 and report.shards_computed == 2  # 3 full shards survived the kill
    for side in ("image", "text"):
        torch.testing.assert_close(getattr(post, side).A, getattr(ref, side).A, rtol=0, atol=0)
        torch.testing.assert_close(getattr(post, side).B, getattr(ref, side).B, rtol=0, atol=0)
    again, report = _fit(vlm, folder, tmp_path / "resumed")  # everything cached, KFAC checkpoint reused
    assert report.shards_computed == 0
    torch.testing.assert_close(again.text.B, ref.text.B, rtol=0, atol=0)


def test_cache_of_another_model_and_bad_sources_are_refused(folder, tmp_path):
    _fit(build_tiny(TINY_CLIP, seed=0), folder, tmp_path / "cache")
    with pytest.raises(FitError, match="another model"):
        _fit(build_tiny(TINY_CLIP, seed=1), folder, tmp_path / "cache")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "captions.csv").write_text("path,caption\n")
    with pytest.raises(FitError, match="no pairs"):
        _fit(build_tiny(TINY_CLIP), empty, tmp_path / "c2")
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "captions.csv").write_text("path,caption\nnope.png,hello\n")
    with pytest.raises(FitError, match="no usable pairs"):
        _fit(build_tiny(TINY_CLIP), only_bad, tmp_path / "c3")
    with pytest.raises(FileNotFoundError):
        _fit(build_tiny(TINY_CLIP), tmp_path / "nowhere.csv", tmp_path / "c4")


def test_webdataset_shards_and_jsonl(tmp_path):
    g = torch.Generator().manual_seed(3)
    tar_path = tmp_path / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(12):
            buf = io.BytesIO()
            Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).byte().numpy()).save(buf, format="PNG")
            data = {"png": buf.getvalue() if i != 4 else b"garbage", "txt": f"thing {i}".encode()}
            for ext, payload in data.items():
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    vlm = build_tiny(TINY_CLIP)
    post, report = _fit(vlm, str(tmp_path / "shard-{000..000}.tar"), tmp_path / "c", num_candidates=4,
                        shard_size=4)
    assert report.num_pairs == 11 and report.skipped == {"bad_image": 1}
    rows = [{"image": f"{i}.png", "text": f"thing {i}"} for i in range(6)]
    d = _make_folder(tmp_path / "j", n=6, extras=False)
    (d / "pairs.jsonl").write_text("\n".join(__import__("json").dumps(r) for r in rows) + "\n{broken\n")
    _, report = _fit(vlm, d / "pairs.jsonl", tmp_path / "c2", num_candidates=4, shard_size=2)
    # rows 4, 5 and the broken row 6 form a short last class batch: dropped
    assert report.num_pairs == 4 and report.skipped == {"bad_row": 1, "partial_class_batch": 2}


def _worker(rank: int, world: int, data: str, cache: str, out: str, init: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    vlm = build_tiny(TINY_CLIP)
    post, _ = fit_posterior(vlm, data, num_candidates=16, shard_size=8, batch_size=8, cache_dir=cache,
                            progress=False, prior_precision=1.0)
    if rank == 0:
        post.save(out)
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_equal_one(folder, tmp_path):
    vlm = build_tiny(TINY_CLIP)
    ref, _ = _fit(vlm, folder, tmp_path / "single", prior_precision=1.0)
    out = tmp_path / "dist"
    mp.spawn(_worker, args=(2, str(folder), str(tmp_path / "multi"), str(out), str(tmp_path / "init")),
             nprocs=2, join=True)
    post = bx.Posterior.load(out)
    assert post.metadata["report"]["skipped"] == {"missing_file": 1, "bad_image": 1, "bad_caption_encoding": 1,
                                                  "empty_caption": 1, "partial_class_batch": 8}
    # the ranks run their float32 encoders with 1 thread instead of 2, which moves embeddings by ~1e-7;
    # the float64 algebra on top is otherwise the same (a wrong partition would differ by O(1))
    for side in ("image", "text"):
        for k in ("A", "B"):
            mine, theirs = getattr(getattr(post, side), k), getattr(getattr(ref, side), k)
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6 * float(theirs.abs().max()))
    assert post.image.num_pairs == N_GOOD - 8
    # each rank computed only its own shards (class batches 0, 2 on rank 0; 1 on rank 1)
    assert len(os.listdir(tmp_path / "multi" / "features")) == 5


def test_vlm_fit_and_optimize_prior_precision(folder, tmp_path):
    vlm = build_tiny(TINY_CLIP)
    report = vlm.fit(folder, num_candidates=16, shard_size=8, batch_size=8, cache_dir=tmp_path / "c",
                     progress=False)
    assert vlm.posterior.image.A.shape == (32, 32) and report.num_pairs == N_GOOD - 8
    exact = vlm.optimize_prior_precision()
    ref = vlm.optimize_prior_precision(mode="reference")
    assert exact["image"] != pytest.approx(ref["image"], rel=1e-3)  # the log-det bug changes λ
    tenfold = vlm.optimize_prior_precision(pseudo_count=10.0)
    assert vlm.posterior.image.pseudo_count == 10.0 and tenfold["image"] != exact["image"]
    pred = vlm.predict(torch.randn(2, 3, 32, 32), ["a picture of thing 1", "a picture of thing 2"])
    assert torch.isfinite(pred.var).all()
    vlm.posterior.save(tmp_path / "post")
    assert bx.Posterior.load(tmp_path / "post").metadata["marglik"] == "exact"


def test_cli_fit(folder, tmp_path, monkeypatch):
    from bayesvlm_explain import cli

    vlm = build_tiny(TINY_CLIP)
    monkeypatch.setattr(cli, "_load", lambda args: vlm)
    out = tmp_path / "post"
    assert cli.main(["fit", "--data", str(folder), "--out", str(out), "--num-candidates", "16",
                     "--shard-size", "8", "--batch-size", "8", "--prior-precision", "5,7"]) == 0
    post = bx.Posterior.load(out)
    assert (post.image.prior_precision, post.text.prior_precision) == (5.0, 7.0)
    assert cli.main(["fit", "--data", str(tmp_path / "none.csv"), "--out", str(out)]) == 2


def test_hf_datasets_imagefolder_source(tmp_path):
    """Optional extra: a Hugging Face imagefolder built from local files (no hub access)."""
    d = _make_folder(tmp_path / "hf", n=6, extras=False)
    (d / "captions.csv").unlink()
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    rows = [f'{i}.png,"thing {i}"' for i in range(6)] + ['broken.png,"a corrupt one"']
    (d / "metadata.csv").write_text("file_name,text\n" + "\n".join(rows) + "\n")
    vlm = build_tiny(TINY_CLIP)
    _, report = _fit(vlm, f"hf-imagefolder:{d}", tmp_path / "c", num_candidates=4, shard_size=2)
    assert report.num_pairs + sum(report.skipped.values()) == 7
    assert report.skipped["bad_image"] == 1 and report.skipped["partial_class_batch"] in (2, 3)
