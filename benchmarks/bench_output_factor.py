"""Benchmark: fast output factor (method.md §7.2 rewrite) vs the naive per-sample D×D formula.

Both paths compute Σ_i H_i for the same B sources against the same C candidates, for InfoNCE (τ = 100)
and sigmoid/SigLIP (τ = 110, bias −12). A row's dtype is both the inputs' and the compute dtype
(``compute_dtype=``): "float64" is the library default (float64 compute whatever the inputs), "float32"
the opt-in float32 compute on float32 inputs. Every (path, C, likelihood, dtype) runs in its own fresh
subprocess so that memory figures do not mix:

* time: wall-clock seconds of ``output_factor`` / ``output_factor_naive`` (inputs already in memory).
  The first call is reported separately; "time" is the best of ``--repeats`` further calls for the fast
  path and the first call for the naive path (which is compute bound and runs for minutes).
* peak memory: extra resident memory at the high point of the *first* call, on top of the already-loaded
  inputs: the peak-RSS mark is reset just before the call (``echo 5 > /proc/self/clear_refs``), and
  reported is ``VmHWM`` after the call minus ``VmRSS`` before it. Workers run with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that every large buffer is a fresh mmap (freed memory goes back to
  the OS and cannot hide a later peak). Page-granular, includes the result and allocator slack; not a
  count of tensor bytes. Where ``clear_refs`` is not writable it falls back to the growth of
  ``getrusage().ru_maxrss``, which can under-report (the table then says so).
* agreement: relative Frobenius error ‖X − ref‖/‖ref‖ against the float64 naive result (the reference)
  and between fast and naive at the same dtype.

Synthetic data mimic one class batch: the first B candidates are the sources' own pairs (cos ≈ 0.3),
the rest unrelated captions (cos ≈ 0.15 ± 0.04), source norms in [8, 12].

Saturation table (InfoNCE, τ = 100, in-process; docs/numerics.md): float32 images [C, D] ~ N(0, 1) and
captions = images + σ·noise, the first B images as sources. As σ falls the softmax saturates
(1 − p_k → 0). Reported: max|B|, the largest off-pivot mass 1 − p_k, the relative error of the default
path (float64 compute), of the fit's mixed path (float64 logits, float32 probability-weighted moments:
``moment_dtype=torch.float32``) and of float32 compute against the float64 naive oracle on the same
float32 inputs (or, where the naive loop is skipped, against the default path), the smallest eigenvalue
over the largest, and the three fast paths' times.

Fit table (``--fit-sources``; one side of one class batch of the reference's C = 32,768): the output
factor of B sources against 32,768 candidates in the three precisions and the input factor
``Σ ããᵀ`` (p = 768) in float64 and float32, timed round-robin (one warm-up call, then ``--fit-rounds``
rounds) and extrapolated linearly to 32,768 sources; errors against the float64 path, on the
unsaturated synthetic class batch above and on a saturated one (σ = 1.5).

    python benchmarks/bench_output_factor.py                       # D=512, B=256, C=1024, 4096, 32768
    python benchmarks/bench_output_factor.py --json                # writes bench_output_factor.json
    python benchmarks/bench_output_factor.py --only-fit --json     # only the fit table (kept rows reused)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from machine import machine_info, round_robin  # benchmarks/machine.py (this folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bayesvlm_explain.estimation import input_factor, output_factor, output_factor_naive  # noqa: E402

SETTINGS = {"infonce": {"tau": 100.0, "bias": None}, "sigmoid": {"tau": 110.0, "bias": -12.0}}
PRECISIONS: dict[str, dict[str, Any]] = {  # keyword arguments of output_factor
    "float64": {},  # the library default: float64 logits and moments
    "mixed": {"moment_dtype": torch.float32},  # the fit's choice (fitting/accumulate.py)
    "float32": {"compute_dtype": torch.float32},
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def make_data(B: int, C: int, D: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources [B, D] (un-normalised) and candidates [C, D]; candidate i < B is source i's pair."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(D, generator=g, dtype=torch.float64)
    common /= common.norm()
    latent = torch.randn(C, D, generator=g, dtype=torch.float64) / math.sqrt(D)

    def embed(rows: int) -> torch.Tensor:
        noise = torch.randn(rows, D, generator=g, dtype=torch.float64) / math.sqrt(D)
        return math.sqrt(0.15) * common + math.sqrt(0.15) * latent[:rows] + math.sqrt(0.7) * noise

    x = embed(B)
    x = x / x.norm(dim=1, keepdim=True) * (8 + 4 * torch.rand(B, 1, generator=g, dtype=torch.float64))
    y = embed(C)
    return x, y


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    x, y = make_data(args.sources, args.C, args.dim, args.seed)
    x, y = x.to(dtype).contiguous(), y.to(dtype).contiguous()
    cfg = SETTINGS[args.likelihood]
    if args.path == "fast":

        def fn() -> torch.Tensor:
            return output_factor(
                x,
                y,
                cfg["tau"],
                likelihood=args.likelihood,
                logit_bias=cfg["bias"],
                chunk_size=args.chunk_size,
                compute_dtype=dtype,
            )
    else:

        def fn() -> torch.Tensor:
            return output_factor_naive(
                x, y, cfg["tau"], likelihood=args.likelihood, logit_bias=cfg["bias"], compute_dtype=dtype
            )

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        method = "VmHWM-after minus VmRSS-before (clear_refs reset)"
        rss0 = _proc_status_kib("VmRSS")
    except OSError:
        method = "ru_maxrss growth (may under-report)"
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    h = fn()
    first = time.perf_counter() - t0
    if method.startswith("VmHWM"):
        rss1 = _proc_status_kib("VmHWM")
    else:
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats if args.path == "fast" else 0):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    torch.save(h, args.out)
    print(
        json.dumps(
            {
                "first_s": first,
                "time_s": min(times) if times else first,
                "peak_rss_growth_mib": (rss1 - rss0) / 1024,
                "baseline_rss_mib": rss0 / 1024,
                "memory_method": method,
            }
        )
    )


def run_one(path: str, C: int, likelihood: str, dtype: str, args: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / f"{path}_{C}_{likelihood}_{dtype}.pt"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        path,
        "--C",
        str(C),
        "--likelihood",
        likelihood,
        "--dtype",
        dtype,
        "--out",
        str(out),
        "--dim",
        str(args.dim),
        "--sources",
        str(args.sources),
        "--threads",
        str(args.threads),
        "--chunk-size",
        str(args.chunk_size),
        "--repeats",
        str(args.repeats),
        "--seed",
        str(args.seed),
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{res.stderr}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info["result"] = torch.load(out, weights_only=True)
    return info


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def cos_stats(args: argparse.Namespace, C: int) -> tuple[float, float, float]:
    x, y = make_data(args.sources, C, args.dim, args.seed)
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(y, dim=1).T
    matched = cos.diagonal()
    mask = ~torch.eye(args.sources, C, dtype=torch.bool)
    return float(matched.mean()), float(cos[mask].mean()), float(cos[mask].std())


def saturation_row(C: int, B: int, D: int, sigma: float, naive: bool, seed: int) -> dict:
    """One row of the saturation table (module docstring), InfoNCE at τ = 100, in this process."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(C, D, generator=g)
    y = img + sigma * torch.randn(C, D, generator=g)
    x = img[:B]
    tau = 100.0
    times = {}
    out = {}
    for name, kw in PRECISIONS.items():
        t0 = time.perf_counter()
        out[name] = output_factor(x, y, tau, **kw)
        times[name] = time.perf_counter() - t0
    ref = output_factor_naive(x, y, tau) if naive else out["float64"]
    z = tau * torch.nn.functional.normalize(x.double(), dim=1) @ torch.nn.functional.normalize(y.double(), dim=1).T
    p = torch.softmax(z, dim=1)
    off_pivot = p.scatter(1, p.argmax(1, keepdim=True), 0.0).sum(1)
    eig = torch.linalg.eigvalsh(out["float64"])
    return {
        "C": C,
        "B": B,
        "D": D,
        "sigma": sigma,
        "reference": "float64 naive" if naive else "default (float64) fast path",
        "max_abs_B": float(ref.abs().max()),
        "max_off_pivot_mass": float(off_pivot.max()),
        "rel_err_default": rel(out["float64"], ref) if naive else None,
        "rel_err_mixed": rel(out["mixed"], ref),
        "rel_err_float32_compute": rel(out["float32"], ref),
        "min_eig_over_max_default": float(eig.min() / eig.max()),
        "min_eig_over_max_mixed": float(torch.linalg.eigvalsh(out["mixed"]).min() / eig.max()),
        "fast_default_s": times["float64"],
        "fast_mixed_s": times["mixed"],
        "fast_float32_compute_s": times["float32"],
    }


def saturation_table(args: argparse.Namespace) -> list[dict]:
    cases = [(args.sat_candidates, args.sources, s, True) for s in args.sat_sigmas]
    cases += [(args.sat_large, args.sat_large_sources, s, False) for s in args.sat_large_sigmas]
    print(f"# saturation (InfoNCE, tau=100, captions = images + sigma*noise, float32 inputs, D={args.dim})")
    print(
        f"{'C':>6} {'B':>5} {'sigma':>5} | {'max|B|':>8} {'1-p_k':>8} | {'err f64':>8} {'err mix':>8} "
        f"{'err f32':>8} {'mineig/max':>10} | {'f64 s':>6} {'mix s':>6} {'f32 s':>6}"
    )
    rows = []
    for C, B, sigma, naive in cases:
        row = saturation_row(C, B, args.dim, sigma, naive, args.seed)
        rows.append(row)
        e64 = f"{row['rel_err_default']:8.1e}" if row["rel_err_default"] is not None else f"{'(ref)':>8}"
        print(
            f"{C:>6} {B:>5} {sigma:5.1f} | {row['max_abs_B']:8.1e} {row['max_off_pivot_mass']:8.1e} | {e64} "
            f"{row['rel_err_mixed']:8.1e} {row['rel_err_float32_compute']:8.1e} "
            f"{row['min_eig_over_max_default']:10.1e} | {row['fast_default_s']:6.2f} {row['fast_mixed_s']:6.2f} "
            f"{row['fast_float32_compute_s']:6.2f}",
            flush=True,
        )
    return rows


def fit_table(args: argparse.Namespace) -> dict:
    """One side of one class batch at C = 32,768 in each precision (module docstring), extrapolated."""
    C, B, full = 32_768, args.fit_sources, 32_768
    x, y = make_data(B, C, args.dim, args.seed)
    data = {"unsaturated": (x.float(), y.float())}
    g = torch.Generator().manual_seed(args.seed)
    img = torch.randn(C, args.dim, generator=g)
    data["saturated_sigma1.5"] = (img[:B], img + 1.5 * torch.randn(C, args.dim, generator=g))
    act = torch.randn(full, 768, generator=g)  # the input factor of a whole class batch (p = 768)
    xs, ys = data["unsaturated"]
    cases: dict[str, Callable[[], torch.Tensor]] = {
        f"B_{name}": partial(output_factor, xs, ys, 100.0, chunk_size=512, **kw) for name, kw in PRECISIONS.items()}
    cases["A_float64"] = lambda: input_factor(act, bias=False)
    cases["A_float32"] = lambda: torch.cat([c.T @ c for c in act.split(4096)]).view(-1, 768, 768).double().sum(0)
    print(f"# fit table: C={C}, {B} sources timed (x{full / B:g} to a class batch), D={args.dim}", flush=True)
    timed = round_robin(cases, args.fit_rounds)
    out: dict = {"C": C, "sources_timed": B, "extrapolated_to": full, "rounds": args.fit_rounds, "rows": {}}
    for name, (sec, _) in timed.items():
        scale = full / B if name.startswith("B_") else 1.0
        out["rows"][name] = {"seconds": round(sec, 3), "seconds_per_class_batch_side": round(sec * scale, 1)}
        print(f"{name:>12}: {sec:8.3f} s -> {sec * scale:7.1f} s per side per class batch", flush=True)
    ref_a = timed["A_float64"][1]
    out["rel_err_A_float32"] = rel(timed["A_float32"][1], ref_a)
    for label, (xx, yy) in data.items():
        ref = output_factor(xx, yy, 100.0)
        for name, kw in PRECISIONS.items():
            if name != "float64":
                out[f"rel_err_B_{name}_{label}"] = rel(output_factor(xx, yy, 100.0, **kw), ref)
    print(json.dumps({k: v for k, v in out.items() if k.startswith("rel_err")}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=512, help="embedding dim D")
    ap.add_argument("--sources", type=int, default=256, help="number of sources B")
    ap.add_argument("--candidates", type=int, nargs="+", default=[1024, 4096, 32768], help="candidate counts C")
    ap.add_argument("--likelihoods", nargs="+", default=["infonce", "sigmoid"], choices=list(SETTINGS))
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=list(DTYPES))
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every worker")
    ap.add_argument("--chunk-size", type=int, default=256, help="source chunk of the fast path")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of the fast path after the first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sat-sigmas", type=float, nargs="*", default=[8.0, 4.0, 2.5, 1.5], help="σ, naive oracle")
    ap.add_argument("--sat-candidates", type=int, default=1024, help="C of the saturation rows with the oracle")
    ap.add_argument("--sat-large", type=int, default=32768, help="C of the saturation rows without the oracle")
    ap.add_argument("--sat-large-sources", type=int, default=1024, help="B of those rows")
    ap.add_argument("--sat-large-sigmas", type=float, nargs="*", default=[8.0, 1.5], help="σ of those rows")
    ap.add_argument("--fit-sources", type=int, default=4096, help="sources timed in the fit table (C = 32,768)")
    ap.add_argument("--fit-rounds", type=int, default=2, help="round-robin rounds of the fit table")
    ap.add_argument("--only-fit", action="store_true", help="run only the fit table; keep the JSON's other parts")
    ap.add_argument(
        "--json",
        nargs="?",
        const=str(Path(__file__).with_suffix(".json")),
        default=None,
        help="write results as JSON (default path: next to this script)",
    )
    # internal: one measurement in a fresh process
    ap.add_argument("--worker", choices=["fast", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--C", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--likelihood", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.path = args.worker
        worker(args)
        return

    print(
        f"# D={args.dim} B={args.sources} threads={args.threads} chunk={args.chunk_size} "
        f"torch={torch.__version__} cpu_count={os.cpu_count()}"
    )
    torch.set_num_threads(args.threads)
    if args.only_fit:
        fit = fit_table(args)
        if args.json:
            old = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
            old.setdefault("meta", {})["machine_fit"] = machine_info()
            Path(args.json).write_text(json.dumps({**old, "fit": fit}, indent=2))
            print(f"# wrote {args.json}")
        return
    saturation = saturation_table(args)
    fit = fit_table(args)
    rows = []
    hdr = (
        f"{'C':>6} {'lik':>8} {'dtype':>7} | {'fast s':>8} {'naive s':>9} {'ratio':>7} | "
        f"{'fast MiB':>8} {'naive MiB':>9} | {'fast~naive':>10} {'fast~ref64':>10} {'naive~ref64':>11}"
    )
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for C in args.candidates:
            mc, uc, us = cos_stats(args, C)
            print(f"# C={C}: cos matched {mc:.3f}, unmatched {uc:.3f} ± {us:.3f}")
            print(hdr)
            for lik in args.likelihoods:
                dtypes = sorted(args.dtypes, key=lambda d: d != "float64")  # float64 first: the reference
                ref = None
                for dt in dtypes:
                    fast = run_one("fast", C, lik, dt, args, tmp)
                    naive = run_one("naive", C, lik, dt, args, tmp)
                    if dt == "float64":
                        ref = naive["result"]
                    row = {
                        "C": C,
                        "D": args.dim,
                        "B": args.sources,
                        "likelihood": lik,
                        "dtype": dt,
                        "threads": args.threads,
                        "fast_first_s": fast["first_s"],
                        "fast_s": fast["time_s"],
                        "naive_s": naive["time_s"],
                        "speedup": naive["time_s"] / fast["time_s"],
                        "fast_peak_rss_growth_mib": fast["peak_rss_growth_mib"],
                        "naive_peak_rss_growth_mib": naive["peak_rss_growth_mib"],
                        "memory_method": fast["memory_method"],
                        "rel_err_fast_vs_naive": rel(fast["result"], naive["result"]),
                        "rel_err_fast_vs_ref64": rel(fast["result"], ref) if ref is not None else None,
                        "rel_err_naive_vs_ref64": rel(naive["result"], ref) if ref is not None else None,
                    }
                    rows.append(row)

                    def fmt(v: float | None) -> str:
                        return f"{v:10.2e}" if v is not None else f"{'-':>10}"

                    print(
                        f"{C:>6} {lik:>8} {dt:>7} | {row['fast_s']:8.3f} {row['naive_s']:9.2f} "
                        f"{row['speedup']:6.0f}x | {row['fast_peak_rss_growth_mib']:8.1f} "
                        f"{row['naive_peak_rss_growth_mib']:9.1f} | {fmt(row['rel_err_fast_vs_naive'])} "
                        f"{fmt(row['rel_err_fast_vs_ref64'])} {fmt(row['rel_err_naive_vs_ref64']):>11}",
                        flush=True,
                    )
    print(f"# memory column: {', '.join(sorted({r['memory_method'] for r in rows}))}")
    if args.json:
        meta = {
            "machine": machine_info(),
            "threads": args.threads,
            "chunk_size": args.chunk_size,
            "memory_metric": "peak RSS during the first call minus RSS before it, fresh process per path",
            "memory_method": sorted({r["memory_method"] for r in rows}),
            "time_metric": "fast: best of repeats after a first call; naive: single call",
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "saturation": saturation, "fit": fit},
                                              indent=2))
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
