"""How accurate are the analytic logit moments against the true cosine? (harder oracle than the tests)

The oracle samples the true cosine directly: the image embedding ``u ~ N(μ_u, s Σ_i)`` and the prompts'
embeddings jointly from the matrix normal (``v_c = μ_c + ΔW g̃_c``, ``ΔW ~ MN(0, Σ_t, Ã_txt⁻¹)``), with

* anisotropic factors: ``Σ_i``, ``Σ_t`` with eigenvalues spread log-uniformly over ``--aniso`` decades in
  random eigenbases (and the isotropic-ish Wishart factors of the tests for comparison);
* aligned pairs (cosines of the means 0.6-0.86) and unaligned ones (cosines near 0, both signs);
* widths from tight to broad: the factors scaled so that the posterior's relative spread per dimension
  (``sqrt(tr Σ / ||μ||²)``) runs from about 0.03 to 2.

Reported per case: the worst mean error in units of the true posterior standard deviation
``|E τcos − m| / sd(τcos)`` and the range of ``var_mode / var_true`` for the projected, expected-norm and
diagonal variances (τ = 1; both ratios are scale-free). ``--draws`` Monte Carlo draws (the standard error
of a variance ratio is about sqrt(2 / draws), 1% at 20,000).

Also measured, **not** a library mode: the projected variance plus the second-order delta-method terms of
the cosine's normalisation, ``½ tr((H_uu Σ_u)²)`` and ``½ tr((H_vv Σ_v)²)`` (``H_uu`` the Hessian of
``cos(u, μ_v)`` in ``u`` at ``μ_u``, ``Σ_u = sΣ_i``; likewise for v with ``Σ_v = t_c Σ_t``), each damped by
``ρ^k`` (``ρ = ||μ||² / E||·||²`` of its side, ``--damping`` k): undamped, the Taylor series fails at broad
widths. Computed explicitly per pair with D×D matrices (:func:`second_order_terms`). ``--grid heldout``
runs other dims, widths, anisotropies and seeds than the default grid, to check a damping chosen on it.

    python benchmarks/bench_moments.py [--draws 20000] [--json benchmarks/bench_moments.json]
    python benchmarks/bench_moments.py --grid heldout --json benchmarks/bench_moments_heldout.json
    python benchmarks/bench_moments.py --cost    # only the cost side (added to the JSON)

Cost side (``--cost``): in the head, the two second-order terms need two more products with the prompts'
embeddings, ``(Σ_i² û_n)ᵀ μ_c`` and ``(Σ_t² μ_n)ᵀ μ_c`` (the projected mode's one ``[3N, D] × [D, C]``
product becomes ``[5N, D] × [D, C]``), besides O(N C) elementwise work. Timed round-robin at N = 32 x
C = 21,843, D = p_t = 512 (random SPD posterior): the projected head per image batch
(``image_moments``) and that extra ``[2N, D] × [D, C]`` product alone: a lower bound on the added cost.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py (run as a script: this folder is on sys.path)

from bayesvlm_explain.probcos import cosine_moments

MODES = ("projected", "expected_norm", "diagonal")
GRIDS = {  # (D, C, p, anisotropy decades, widths, seed offset)
    "default": (48, 6, 24, (0.0, 1.0, 2.0), (0.03, 0.1, 0.3, 0.7, 2.0), 0),
    "heldout": (96, 6, 32, (0.5, 1.5, 2.5), (0.05, 0.2, 0.5, 1.0, 1.5), 1000),
}


def _factor(d: int, decades: float, gen: torch.Generator) -> torch.Tensor:
    """SPD [d, d] with unit mean eigenvalue: log-uniform spectrum over ``decades`` (0: a Wishart draw)."""
    if decades == 0:
        m = torch.randn(d, d + 3, generator=gen, dtype=torch.float64)
        k = m @ m.T / (d + 3)
        return k / k.diagonal().mean()
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    ev = 10 ** (decades * torch.rand(d, generator=gen, dtype=torch.float64))
    return (q * (ev / ev.mean())) @ q.T


def second_order_terms(mu_u: torch.Tensor, sig_u: torch.Tensor, mu_v: torch.Tensor, sig_v: torch.Tensor
                       ) -> tuple[float, float]:
    """``(½ tr((H_uu Σ_u)²), ½ tr((H_vv Σ_v)²))`` of ``cos(u, v)`` at the means [D] (module doc), with
    ``H_uu = −((P_u v̂) ûᵀ + û (P_u v̂)ᵀ + (ûᵀv̂) P_u) / ||μ_u||²``, ``P_u = I − ûûᵀ``, and likewise for v."""
    eye = torch.eye(mu_u.numel(), dtype=torch.float64)
    u_hat, v_hat = mu_u / mu_u.norm(), mu_v / mu_v.norm()
    cos = float(u_hat @ v_hat)
    out = []
    for mine, other, sig, norm in ((u_hat, v_hat, sig_u, mu_u.norm()), (v_hat, u_hat, sig_v, mu_v.norm())):
        proj = eye - torch.outer(mine, mine)
        w = proj @ other
        hess = -(torch.outer(w, mine) + torch.outer(mine, w) + cos * proj) / norm**2
        hs = hess @ sig
        out.append(0.5 * float(torch.trace(hs @ hs)))
    return out[0], out[1]


def _case(d: int, c: int, p: int, width: float, decades: float, aligned: bool, draws: int, seed: int,
          damping: float) -> dict:
    gen = torch.Generator().manual_seed(seed)
    kw = {"dtype": torch.float64, "generator": gen}
    base = torch.randn(d, **kw)
    base /= base.norm()
    mu_u = (base + 0.5 * torch.randn(d, **kw) / d**0.5)[None] * 3.0
    if aligned:
        mu_v = torch.stack([base + w * torch.randn(d, **kw) / d**0.5 for w in torch.linspace(0.35, 1.0, c)]) * 2.0
    else:
        mu_v = torch.randn(c, d, **kw)
        mu_v = mu_v - (mu_v @ base)[:, None] * base[None] * torch.linspace(0.9, 1.1, c)[:, None]  # cos ≈ 0
        mu_v = 2.0 * mu_v / mu_v.norm(dim=-1, keepdim=True)
    # relative spread per dimension = width: tr(s Σ_i) = width² ||μ_u||², tr(t_c Σ_t) ≈ width² ||μ_v||²
    sig_i = _factor(d, decades, gen) * (width**2 * 9.0 / d)
    gact = torch.randn(c, p, **kw)
    a_inv = torch.eye(p, dtype=torch.float64) / p
    sig_t = _factor(d, decades, gen) * (width**2 * 4.0 / d)
    s = torch.ones(1, dtype=torch.float64)
    g2 = torch.Generator().manual_seed(seed + 1)
    li, lt, la = (torch.linalg.cholesky(x) for x in (sig_i, sig_t, a_inv))
    u = mu_u + torch.randn(draws, d, dtype=torch.float64, generator=g2) @ li.T
    cos = []
    for chunk in torch.arange(draws).split(2000):
        z = torch.randn(len(chunk), d, p, dtype=torch.float64, generator=g2)
        v = mu_v[None] + (lt @ z @ (gact @ la).T).transpose(1, 2)
        cos.append(torch.nn.functional.cosine_similarity(u[chunk, None, :], v, dim=-1))
    true = torch.cat(cos)
    t_mean, t_var = true.mean(0), true.var(0)
    out = {"width": width, "anisotropy_decades": decades, "aligned": aligned,
           "mean_cos": [round(x, 3) for x in torch.nn.functional.cosine_similarity(mu_u, mu_v).tolist()]}
    for mode in MODES:
        mom = cosine_moments(mu_u, s, mu_v, gact, sig_i, sig_t, a_inv, 1.0, variance=mode)
        ratio = mom.var[0] / t_var
        out[mode] = {"var_ratio_min": round(float(ratio.min()), 3), "var_ratio_max": round(float(ratio.max()), 3)}
        if mode == "projected":
            out["mean_error_sd"] = round(float(((mom.mean[0] - t_mean).abs() / t_var.sqrt()).max()), 4)
            projected = mom.var[0]
    t_c = ((gact @ a_inv) * gact).sum(-1)
    rho_u = float(mu_u.square().sum() / (mu_u.square().sum() + sig_i.trace()))
    second = []
    for k in range(c):
        uu, vv = second_order_terms(mu_u[0], sig_i, mu_v[k], t_c[k] * sig_t)
        rho_v = float(mu_v[k].square().sum() / (mu_v[k].square().sum() + t_c[k] * sig_t.trace()))
        second.append(float(projected[k]) + rho_u**damping * uu + rho_v**damping * vv)
    ratio = torch.tensor(second, dtype=torch.float64) / t_var
    out["projected_second_order"] = {"var_ratio_min": round(float(ratio.min()), 3),
                                     "var_ratio_max": round(float(ratio.max()), 3)}
    return out


def cost_side(rounds: int) -> dict:
    """The projected head per image batch against the extra product the second-order terms need."""
    from machine import round_robin

    from bayesvlm_explain.probcos import image_moments, prompt_terms

    n, c, d = 32, 21_843, 512
    gen = torch.Generator().manual_seed(0)
    spd = [_factor(d, 1.0, gen) / d for _ in range(3)]
    txt_mean, txt_act = torch.randn(c, d, generator=gen, dtype=torch.float64), torch.randn(c, d, generator=gen,
                                                                                              dtype=torch.float64)
    img = torch.randn(n, d, generator=gen, dtype=torch.float64)
    scale = torch.rand(n, generator=gen, dtype=torch.float64)
    terms = prompt_terms(txt_mean, txt_act, spd[0], spd[1], spd[2])
    extra = torch.randn(2 * n, d, generator=gen, dtype=torch.float64)
    timed = round_robin({"projected_head": lambda: image_moments(img, scale, terms, 100.0).var,
                         "extra_product": lambda: extra @ txt_mean.T}, rounds)
    head, prod = timed["projected_head"][0], timed["extra_product"][0]
    return {"N": n, "C": c, "D": d, "rounds": rounds, "projected_head_s": round(head, 4),
            "extra_product_s": round(prod, 4), "lower_bound_ratio": round((head + prod) / head, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("bench_moments.json"))
    ap.add_argument("--grid", choices=list(GRIDS), default="default")
    ap.add_argument("--damping", type=float, default=4.0, help="k of the second-order terms' ρ^k damping")
    ap.add_argument("--cost", action="store_true", help="only time the cost side; add it to --json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.cost:
        cost = cost_side(rounds=7)
        print(json.dumps(cost))
        old = json.loads(args.json.read_text()) if args.json.is_file() else {}
        args.json.write_text(json.dumps({**old, "second_order_cost": {**cost, "machine": machine_info()}},
                                        indent=1) + "\n")
        return
    d, c, p, anisotropies, widths, offset = GRIDS[args.grid]
    cases: list[dict] = []
    for decades in anisotropies:
        for aligned in (True, False):
            for width in widths:
                row = _case(d, c, p, width, decades, aligned, args.draws, offset + len(cases), args.damping)
                print(json.dumps(row), flush=True)
                cases.append(row)
    summary = {"mean_error_sd_max": max(r["mean_error_sd"] for r in cases)}
    for mode in (*MODES, "projected_second_order"):
        summary[mode] = {"var_ratio_min": min(r[mode]["var_ratio_min"] for r in cases),
                         "var_ratio_max": max(r[mode]["var_ratio_max"] for r in cases)}
    mc_se = (2 / args.draws) ** 0.5
    out = {"machine": machine_info(), "grid": args.grid, "dims": {"D": d, "C": c, "p": p}, "damping": args.damping,
           "draws": args.draws,
           "variance_ratio_mc_standard_error": round(mc_se, 4), "summary": summary, "cases": cases}
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
