"""Posterior algebra, storage, the reference layout, and refusal of untrusted files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLIP, build_tiny, random_posterior, random_spd
from safetensors.torch import save_file

import bayesvlm_explain as bx
from bayesvlm_explain.posterior import PosteriorError

SHARED_FACTORS = Path(__file__).resolve().parents[2] / "shared" / "reference-factors" / \
    "CLIP-ViT-B-32-laion2B-s34B-b79K"


def test_covariance_convention_and_matrix_normal_draws():
    gen = torch.Generator().manual_seed(0)
    post = bx.KronPosterior(random_spd(5, gen), random_spd(3, gen), pseudo_count=4.0, prior_precision=9.0)
    a_prec, b_prec = post.precision_factors()
    torch.testing.assert_close(a_prec, 2.0 * post.A + 3.0 * torch.eye(5, dtype=torch.float64))
    a_inv, b_inv = post.covariance_factors()
    torch.testing.assert_close(a_inv @ a_prec, torch.eye(5, dtype=torch.float64))
    # Cov(W x) = (xᵀ Ã⁻¹ x) B̃⁻¹ for full matrix draws W − W* ~ MN(0, B̃⁻¹, Ã⁻¹)
    x = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    dw = post.sample_weight_noise(100_000, torch.Generator().manual_seed(1))
    y = dw @ x.T  # [S, D, 2]
    emp = torch.einsum("sdn,sen->nde", y, y) / y.shape[0]
    scales = post.input_scales(x)
    for n in range(2):
        torch.testing.assert_close(emp[n], scales[n] * b_inv, rtol=0.03, atol=0.03 * b_inv.abs().max().item())
    # vec(W) covariance is kron(Ã⁻¹, B̃⁻¹) in column-stacking order
    vec = dw[:20_000].transpose(1, 2).reshape(20_000, -1)
    emp_vec = vec.T @ vec / vec.shape[0]
    kron = torch.kron(a_inv, b_inv)
    assert (emp_vec - kron).abs().max() < 0.06 * kron.abs().max()
    # sample_outputs uses the same law as full draws applied to the inputs
    out = post.sample_outputs(x, torch.zeros(2, 3, dtype=torch.float64), 100_000, torch.Generator().manual_seed(2))
    emp2 = torch.einsum("snd,sne->nde", out, out) / out.shape[0]
    torch.testing.assert_close(emp2, emp, rtol=0.05, atol=0.05 * b_inv.abs().max().item())


def test_hyperparameter_change_invalidates_cached_inverses():
    gen = torch.Generator().manual_seed(0)
    post = bx.KronPosterior(random_spd(4, gen), random_spd(3, gen), prior_precision=1.0)
    before = post.covariance_factors()[1].clone()
    post.prior_precision = 100.0
    after = post.covariance_factors()[1]
    assert not torch.allclose(before, after)
    with pytest.raises(PosteriorError):
        post.pseudo_count = -1.0
    with pytest.raises(PosteriorError):
        bx.KronPosterior(torch.ones(3, 4), torch.eye(3))


def test_save_load_round_trip(tmp_path, tiny_vlm):
    post = tiny_vlm.posterior
    post.metadata.update(model="tiny", likelihood="infonce", num_pairs=123)
    post.save(tmp_path / "post")
    meta = json.loads((tmp_path / "post" / "posterior.json").read_text())
    assert meta["image"]["dim_in"] == post.image.dim_in and meta["model"] == "tiny"
    loaded = bx.Posterior.load(tmp_path / "post")
    for side in ("image", "text"):
        a, b = getattr(post, side), getattr(loaded, side)
        torch.testing.assert_close(a.A, b.A, rtol=0, atol=0)
        torch.testing.assert_close(a.B, b.B, rtol=0, atol=0)
        assert (a.pseudo_count, a.prior_precision) == (b.pseudo_count, b.prior_precision)
    assert loaded.metadata["num_pairs"] == 123


def test_reference_layout_round_trip(tmp_path, tiny_vlm):
    post = tiny_vlm.posterior
    post.save_reference_dir(tmp_path / "ref")
    names = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert names == ["A_img_analytic.pt", "A_txt_analytic.pt", "B_img_analytic.pt", "B_txt_analytic.pt",
                     "prior_precision_analytic.json"]
    loaded = bx.Posterior.from_reference_dir(tmp_path / "ref")
    torch.testing.assert_close(loaded.image.A, post.image.A, rtol=1e-6, atol=1e-6)  # stored as float32
    assert loaded.text.prior_precision == pytest.approx(post.text.prior_precision)
    # the model accepts a reference directory path directly
    tiny_vlm.posterior = tmp_path / "ref"
    tiny_vlm.posterior = post
    with pytest.raises(PosteriorError, match="reference layout"):
        bx.Posterior.load(tmp_path / "ref")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/bayesvlm_pwned",))


def test_malicious_pickles_are_refused_not_executed(tmp_path, tiny_vlm):
    marker = Path("/tmp/bayesvlm_pwned")
    marker.unlink(missing_ok=True)
    tiny_vlm.posterior.save_reference_dir(tmp_path)
    torch.save({"x": _Evil()}, tmp_path / "A_img_analytic.pt")  # zip archive with a hostile pickle
    with pytest.raises(PosteriorError, match="not a plain tensor"):
        bx.Posterior.from_reference_dir(tmp_path)
    (tmp_path / "A_img_analytic.pt").write_bytes(pickle.dumps(_Evil()))  # a bare legacy pickle
    with pytest.raises(PosteriorError, match="refusing"):
        bx.Posterior.from_reference_dir(tmp_path)
    torch.save({"A": torch.eye(3)}, tmp_path / "A_img_analytic.pt")  # allowed types, but not a bare tensor
    with pytest.raises(PosteriorError, match="not a bare tensor"):
        bx.Posterior.from_reference_dir(tmp_path)
    assert not marker.exists()


def test_posterior_for_another_model_is_refused(tiny_vlm):
    other = build_tiny({**TINY_CLIP, "embed_dim": 24})
    wrong = random_posterior(other)
    with pytest.raises(PosteriorError, match="text posterior|image posterior"):
        tiny_vlm.posterior = wrong
    assert tiny_vlm.posterior is not wrong  # the old posterior stays in place


def test_missing_posterior_gives_clear_error():
    vlm = build_tiny(TINY_CLIP)
    with pytest.raises(PosteriorError, match="no posterior"):
        vlm.predict(torch.zeros(1, 3, 32, 32), ["a cat"])


@pytest.mark.skipif(not SHARED_FACTORS.is_dir(), reason="the authors' factors live in ../shared (CI and dev only)")
def test_published_vit_b32_factors_load_and_fit_a_random_vit_b32():
    """Real-scale reference files: read safely, symmetrised, oriented for open_clip ViT-B-32."""
    import open_clip

    post = bx.Posterior.from_reference_dir(SHARED_FACTORS)
    assert (post.image.dim_in, post.image.dim_out, post.text.dim_in) == (768, 512, 512)
    assert post.image.prior_precision == pytest.approx(1708.945, rel=1e-6)
    torch.testing.assert_close(post.image.B, post.image.B.T, rtol=0, atol=0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    vlm = bx.BayesVLM(model, open_clip.get_tokenizer("ViT-B-32"), None, post, device="cpu", name="ViT-B-32")
    pred = vlm.predict(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
                       ["a photo of a dog", "a photo of a cat"])
    assert torch.isfinite(pred.var).all() and (pred.var > 0).all()
    # the real posterior is non-diagonal enough that the exact and diagonal variances differ
    diag = vlm.predict(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
                       ["a photo of a dog", "a photo of a cat"], variance="diagonal")
    assert not torch.allclose(pred.var, diag.var, rtol=1e-3)


# -- hardened reading of posterior files (issue 9 §2) -------------------------------------------------
def _dims(vlm: bx.BayesVLM) -> dict[str, tuple[int, int]]:
    return {side: vlm.projection_dims(side) for side in ("image", "text")}


def test_expanded_reference_tensor_is_refused_before_it_is_materialised(tmp_path, tiny_vlm, monkeypatch):
    tiny_vlm.posterior.save_reference_dir(tmp_path)
    p = tiny_vlm.projection_dims("image")[0]
    torch.save(torch.ones(1, 1).expand(3000, 3000), tmp_path / "A_img_analytic.pt")  # a 1.5 KB file
    assert (tmp_path / "A_img_analytic.pt").stat().st_size < 4096
    with pytest.raises(PosteriorError, match=r"A_img_analytic\.pt declares \(3000, 3000\) but stores fewer"):
        bx.Posterior.from_reference_dir(tmp_path)
    with pytest.raises(PosteriorError, match=f"3000x3000, but the model needs {p}x{p}"):
        bx.Posterior.from_reference_dir(tmp_path, dims=_dims(tiny_vlm))
    monkeypatch.setattr("bayesvlm_explain.posterior.MAX_FACTOR_DIM", 1000)
    with pytest.raises(PosteriorError, match="3000x3000; the limit is 1000"):
        bx.Posterior.from_reference_dir(tmp_path)
    # an expanded view of the right size is refused too: only dense tensors are accepted
    torch.save(torch.ones(1, 1).expand(p, p), tmp_path / "A_img_analytic.pt")
    with pytest.raises(PosteriorError, match="expanded or overlapping"):
        bx.Posterior.from_reference_dir(tmp_path, dims=_dims(tiny_vlm))


def test_safetensors_factor_of_wrong_size_is_refused_from_the_header(tmp_path, tiny_vlm):
    tiny_vlm.posterior.save(tmp_path)
    bx.Posterior.load(tmp_path, dims=_dims(tiny_vlm))
    wrong = {"image": (tiny_vlm.projection_dims("image")[0] + 1, 16), "text": tiny_vlm.projection_dims("text")}
    with pytest.raises(PosteriorError, match="factor image.A is .* but the model needs"):
        bx.Posterior.load(tmp_path, dims=wrong)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: [m], r"posterior\.json must hold a JSON object, not a list"),
    (lambda m: {**m, "format_version": "abc"}, r"format_version must be a non-negative integer, got 'abc'"),
    (lambda m: {**m, "image": "x"}, r"field image of posterior\.json must be an object"),
    (lambda m: {**m, "image": [1]}, r"field image of posterior\.json must be an object"),
    (lambda m: {**m, "text": {**m["text"], "pseudo_count": "abc"}}, r"field text\.pseudo_count .* got 'abc'"),
    (lambda m: {**m, "image": {**m["image"], "prior_precision": -2}}, r"field image\.prior_precision"),
    (lambda m: {**m, "image": {**m["image"], "prior_precision": True}}, r"field image\.prior_precision"),
    (lambda m: {**m, "image": {**m["image"], "num_pairs": "many"}}, r"field image\.num_pairs"),
    (lambda m: {**m, "text": {**m["text"], "dim_in": "7"}}, r"field text\.dim_in is '7'"),
])
def test_malformed_posterior_json_names_the_field(tmp_path, tiny_vlm, edit, match):
    tiny_vlm.posterior.save(tmp_path)
    meta = json.loads((tmp_path / "posterior.json").read_text())
    (tmp_path / "posterior.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(PosteriorError, match=match):
        bx.Posterior.load(tmp_path)


@pytest.mark.parametrize(("hyper", "match"), [
    ([1.0], "must hold a JSON object"),
    ({"lambda_img": "abc", "lambda_txt": 1.0}, "field lambda_img .* got 'abc'"),
    ({"lambda_img": 1.0}, "lacks lambda_txt"),
    ({"lambda_img": 1.0, "lambda_txt": 1.0, "n_txt": 0}, "field n_txt"),
])
def test_malformed_reference_json_names_the_field(tmp_path, tiny_vlm, hyper, match):
    tiny_vlm.posterior.save_reference_dir(tmp_path)
    (tmp_path / "prior_precision_analytic.json").write_text(json.dumps(hyper))
    with pytest.raises(PosteriorError, match=match):
        bx.Posterior.from_reference_dir(tmp_path)


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_sparse_and_integer_factors_are_refused(tmp_path, tiny_vlm):
    post = tiny_vlm.posterior
    post.save_reference_dir(tmp_path)
    torch.save(post.image.A.to_sparse(), tmp_path / "A_img_analytic.pt")
    with pytest.raises(PosteriorError, match="sparse_coo tensor; expected a dense one"):
        bx.Posterior.from_reference_dir(tmp_path)
    with pytest.raises(PosteriorError, match="expected a dense one"):
        bx.KronPosterior(post.image.A.to_sparse(), post.image.B)
    post.save(tmp_path / "ours")
    tensors = {f"{s}.{k}": getattr(getattr(post, s), k) for s in ("image", "text") for k in ("A", "B")}
    tensors["text.B"] = torch.eye(tensors["text.B"].shape[0], dtype=torch.int64)
    save_file(tensors, str(tmp_path / "ours" / "posterior.safetensors"))
    with pytest.raises(PosteriorError, match=r"text posterior \(posterior\.safetensors\).*dtype torch\.int64"):
        bx.Posterior.load(tmp_path / "ours")


def test_factors_must_be_symmetric_psd_beyond_round_off():
    gen = torch.Generator().manual_seed(3)
    a, b = random_spd(6, gen), random_spd(4, gen)
    skew = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    skew = skew - skew.T
    bx.KronPosterior(a + 1e-7 * a.abs().max() * skew, b)  # round-off: accepted, symmetrised
    with pytest.raises(PosteriorError, match="factor A is not symmetric"):
        bx.KronPosterior(a + 0.05 * a.abs().max() * skew, b)
    lam_min = torch.linalg.eigvalsh(b)[0]
    with pytest.raises(PosteriorError, match="factor B is not positive semi-definite"):
        bx.KronPosterior(a, b - (lam_min + 0.01 * b.diagonal().max()) * torch.eye(4, dtype=torch.float64))
    bx.KronPosterior(a, torch.zeros(4, 4))  # PSD (zero curvature) is fine


def test_links_leaving_the_posterior_directory_are_refused(tmp_path, tiny_vlm):
    outside = tmp_path / "outside"
    tiny_vlm.posterior.save(outside)
    inside = tmp_path / "post"
    tiny_vlm.posterior.save(inside)
    (inside / "posterior.json").unlink()
    (inside / "posterior.json").symlink_to(outside / "posterior.json")
    with pytest.raises(PosteriorError, match="posterior.json in post links outside its directory"):
        bx.Posterior.load(inside)
    ref = tmp_path / "ref"
    tiny_vlm.posterior.save_reference_dir(ref)
    (ref / "B_txt_analytic.pt").rename(tmp_path / "elsewhere.pt")
    (ref / "B_txt_analytic.pt").symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(PosteriorError, match="B_txt_analytic.pt in ref links outside"):
        bx.Posterior.from_reference_dir(ref)
    (ref / "B_txt_analytic.pt").unlink()  # a link within the directory is fine
    (tmp_path / "elsewhere.pt").rename(ref / "b_txt_copy.pt")
    (ref / "B_txt_analytic.pt").symlink_to(ref / "b_txt_copy.pt")
    bx.Posterior.from_reference_dir(ref)


# -- factor reassignment and the derived-matrix cache (issue 8 §1) ------------------------------------
def test_assigning_a_factor_drops_the_cached_inverses():
    gen = torch.Generator().manual_seed(0)
    a, b = random_spd(5, gen), random_spd(3, gen)
    post = bx.KronPosterior(a, b, prior_precision=2.0)
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    before = post.input_scales(x)
    post.A = 100 * a
    fresh = bx.KronPosterior(100 * a, b, prior_precision=2.0)
    torch.testing.assert_close(post.input_scales(x), fresh.input_scales(x))
    assert (post.input_scales(x) < before).all()
    post.B = 3 * b
    torch.testing.assert_close(post.covariance_factors()[1], bx.KronPosterior(a, 3 * b, prior_precision=2.0)
                               .covariance_factors()[1])
    with pytest.raises(PosteriorError, match=r"factor A must stay \(5, 5\)"):
        post.A = random_spd(4, gen)
    with pytest.raises(PosteriorError, match="not positive semi-definite"):
        post.A = -a
    torch.testing.assert_close(post.A, 100 * a)  # a refused assignment keeps the old factor


def test_derived_cache_is_consistent_under_concurrent_readers_and_writers():
    import threading

    gen = torch.Generator().manual_seed(0)
    post = bx.KronPosterior(random_spd(40, gen), random_spd(30, gen), prior_precision=1.0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader(dtype):
        while not stop.is_set():
            try:
                post.covariance_factors(dtype=dtype)
                post.sqrt_covariance_factors(dtype=dtype)
            except BaseException as err:  # noqa: BLE001 - recorded and asserted below
                errors.append(err)

    threads = [threading.Thread(target=reader, args=(d,)) for d in (torch.float32, torch.float64) * 2]
    for t in threads:
        t.start()
    for i in range(200):
        post.prior_precision = 1.0 + i % 7
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    fresh = bx.KronPosterior(post.A, post.B, prior_precision=post.prior_precision)
    for dtype in (torch.float32, torch.float64):
        for got, want in zip(post.covariance_factors(dtype=dtype), fresh.covariance_factors(dtype=dtype), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
