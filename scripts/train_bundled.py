"""Train the bundled CLIP-style model from scratch on CPU and write ``bayesvlm_explain/pretrained/bundled/``.

Data: the permissive training styles (Noto, Twemoji, Fluent Flat) rendered by
``tools.emoji`` into the cache (fetched and rendered on demand), minus the held-out
calibration and test renders of the label-space classes (``tools.emoji.splits``; their
ids go to ``training.json`` with the training ids). Seeded; one torch thread.

Examples::

    python scripts/train_bundled.py                              # the shipped recipe: 1000 steps, seed 0
    python scripts/train_bundled.py --steps 0 --minutes 30       # time-calibrated step count
    python scripts/train_bundled.py --eval-only                  # re-evaluate the shipped model
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bayesvlm_explain import bundled  # noqa: E402
from bayesvlm_explain.data.labels import load_label_space  # noqa: E402
from tools import emoji  # noqa: E402
from tools.augment import MEAN, STD, augment, load_images, normalise  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4: pad 0, eos ([SEP]) 3


def model_config(args: argparse.Namespace, tokenizer_dir: str = "tokenizer") -> dict:
    """open_clip ``model_cfg``: tiny ViT + built-in text transformer with a custom WordPiece vocab."""
    return {
        "embed_dim": args.embed_dim,
        "quick_gelu": False,
        "vision_cfg": {
            "image_size": args.size,
            "patch_size": args.patch,
            "width": args.vision_width,
            "layers": args.vision_layers,
            "head_width": 64,
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "context_length": args.context,
            "vocab_size": args.vocab,
            "hf_tokenizer_name": tokenizer_dir,
            "width": args.text_width,
            "heads": args.text_width // 64,
            "layers": args.text_layers,
            "pool_type": "eos",
            "eos_id": SPECIALS.index("[SEP]"),
            "pad_id": SPECIALS.index("[PAD]"),
        },
    }


def preprocess_config(size: int) -> dict:
    return {
        "size": size,
        "mode": "RGB",
        "mean": list(MEAN),
        "std": list(STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }


# ----------------------------------------------------------------------------------------- tokenizer


def tokenizer_corpus(concepts: list[emoji.Concept]) -> list[str]:
    """Every caption fragment the model sees: variants, labels, tags, group names."""
    corpus: list[str] = []
    for c in concepts:
        corpus += emoji.caption_variants(c)
        corpus += list(c.tags)
        corpus.append(c.group)
    return corpus


def train_tokenizer(concepts: list[emoji.Concept], out_dir: Path, vocab: int, context: int) -> None:
    """Train a lower-casing WordPiece tokenizer (``[CLS] ... [SEP]``) and save it HF-style."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab, special_tokens=SPECIALS, min_frequency=1)
    tok.train_from_iterator(tokenizer_corpus(concepts), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=context,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    assert fast.vocab_size <= vocab and fast.sep_token_id == SPECIALS.index("[SEP]")


# ------------------------------------------------------------------------------------- augmentation


# ------------------------------------------------------------------------------------------- eval


@torch.no_grad()
def encode_images(model, x: torch.Tensor, bs: int = 256) -> torch.Tensor:
    """Normalised float ``[N, 3, S, S]`` -> unit image embeddings ``[N, D]``."""
    return torch.cat([model.encode_image(x[i : i + bs], normalize=True) for i in range(0, len(x), bs)])


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], bs: int = 512) -> torch.Tensor:
    return torch.cat(
        [model.encode_text(tokenizer(texts[i : i + bs]), normalize=True) for i in range(0, len(texts), bs)]
    )


def topk_acc(img: torch.Tensor, txt: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = img @ txt.T
    top5 = logits.topk(min(5, txt.shape[0]), dim=1).indices
    return float((top5[:, 0] == y).float().mean()), float((top5 == y[:, None]).any(1).float().mean())


@torch.no_grad()
def evaluate(model, tokenizer, concepts: list[emoji.Concept], cache_dir, size: int, seed: int,
             full: bool = True, bench_path: Path | None = None, split_seed: int = 0) -> dict:
    """Zero-shot accuracy on the benchmark label space (and, if ``full``, alternatives).

    * ``in_domain_aug``: the held-out test renders (training styles, never trained on), three fresh
      seeded augmentations each;
    * ``in_domain_clean``: the same renders, no augmentation;
    * ``calibration_clean``: the held-out calibration renders, no augmentation;
    * ``train_clean``: the label-space classes' training renders, no augmentation (for the gap);
    * ``shift/<style>``: each shift style, no augmentation;
    * ``all_concepts``: every concept as a class (1,914-way), training styles, clean;
    * ``subgroups``: emojibase subgroups as classes ("an emoji of <subgroup words>"), training styles, clean.
    """
    model.eval()
    bench = load_label_space(bench_path)
    by_key = {c.key: c for c in concepts}
    txt = encode_texts(model, tokenizer, bench.prompts())
    idx = {k: i for i, k in enumerate(bench.keys)}
    out: dict = {"n_classes": len(bench)}
    styles = list(emoji.TRAIN_STYLES) + (list(emoji.SHIFT_STYLES) if full else [])
    build = emoji.build_dataset(styles, size, cache_dir, [by_key[k] for k in bench.keys], write_manifest=False)
    recs: dict[str, list[emoji.EmojiRecord]] = {}
    for r in build.records:
        recs.setdefault(r.style, []).append(r)
    parts = emoji.split_records([r for s in emoji.TRAIN_STYLES for r in recs.get(s, [])], bench.keys,
                                seed=split_seed)
    test_recs = parts["test"]
    xs = load_images(test_recs)
    y = torch.tensor([idx[r.key] for r in test_recs])
    g = torch.Generator().manual_seed(seed + 12345)
    accs = [topk_acc(encode_images(model, normalise(augment(xs, g))), txt, y) for _ in range(3)]
    out["in_domain_aug"] = {"top1": float(np.mean([a[0] for a in accs])), "top5": float(np.mean([a[1] for a in accs])),
                            "n_images": 3 * len(test_recs), "renders": "test split"}
    t1, t5 = topk_acc(encode_images(model, normalise(xs.float() / 255)), txt, y)
    out["in_domain_clean"] = {"top1": t1, "top5": t5, "n_images": len(test_recs), "renders": "test split"}
    for name in ("calibration", "train"):
        xp = load_images(parts[name])
        yp = torch.tensor([idx[r.key] for r in parts[name]])
        t1, t5 = topk_acc(encode_images(model, normalise(xp.float() / 255)), txt, yp)
        out[f"{name}_clean"] = {"top1": t1, "top5": t5, "n_images": len(parts[name])}
    if full:
        out["shift"] = {}
        for s in emoji.SHIFT_STYLES:
            rs = recs.get(s, [])
            xs_s = load_images(rs)
            ys = torch.tensor([idx[r.key] for r in rs])
            t1, t5 = topk_acc(encode_images(model, normalise(xs_s.float() / 255)), txt, ys)
            out["shift"][s] = {"top1": t1, "top5": t5, "n_images": len(rs)}
        # alternative label spaces, for the record
        all_build = emoji.build_dataset(emoji.TRAIN_STYLES, size, cache_dir, concepts, write_manifest=False)
        # every training-style render (training and held-out alike), as before: a record of the alternatives
        key_idx = {c.key: i for i, c in enumerate(concepts)}
        xa = encode_images(model, normalise(load_images(all_build.records).float() / 255))
        ya = torch.tensor([key_idx[r.key] for r in all_build.records])
        ta = encode_texts(model, tokenizer, [emoji.build_caption(c) for c in concepts])
        t1, t5 = topk_acc(xa, ta, ya)
        out["all_concepts"] = {"top1": t1, "top5": t5, "n_classes": len(concepts), "n_images": len(ya)}
        subs = sorted({c.subgroup for c in concepts})
        sub_idx = {s: i for i, s in enumerate(subs)}
        ys = torch.tensor([sub_idx[concepts[int(i)].subgroup] for i in ya])
        tsub = encode_texts(model, tokenizer, [f"an emoji of {s.replace('-', ' ')}" for s in subs])
        t1, t5 = topk_acc(xa, tsub, ys)
        out["subgroups"] = {"top1": t1, "top5": t5, "n_classes": len(subs), "n_images": len(ys)}
    return out


# ------------------------------------------------------------------------------------------ train


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embedding" in n or "logit_scale" in n else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, cid: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with multi-positive targets (same concept, other style, in one batch)."""
    logits = scale * img @ txt.T
    pos = (cid[:, None] == cid[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (
        -(target * logits.log_softmax(1)).sum(1).mean() - (target.T * logits.T.log_softmax(1)).sum(1).mean()
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=bundled.bundled_dir())
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=1000, help="steps (shipped: 1000); 0: use --minutes")
    p.add_argument("--minutes", type=float, default=30.0, help="with --steps 0: time budget to calibrate the steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--vision-width", type=int, default=192)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--text-width", type=int, default=192)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--context", type=int, default=24)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--fp16", action="store_true", help="store weights in fp16")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-only", action="store_true", help="evaluate the model in --out and exit")
    p.add_argument("--benchmark", type=Path, default=None, help="label-space JSON for --eval-only")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the held-out calibration / test renders (tools.emoji.splits)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    import open_clip

    t_start = time.perf_counter()
    concepts = emoji.load_concepts(args.cache_dir)

    if args.eval_only:
        import os

        os.environ["BAYESVLM_BUNDLED_DIR"] = str(args.out.resolve())
        model, tokenizer, _ = bundled.load_bundled()
        metrics = evaluate(model, tokenizer, concepts, args.cache_dir, args.size, args.seed, bench_path=args.benchmark,
                           split_seed=args.split_seed)
        print(json.dumps(metrics, indent=1))
        return 0

    t0 = time.perf_counter()
    build = emoji.build_dataset(emoji.TRAIN_STYLES, args.size, args.cache_dir, concepts)
    t_data = time.perf_counter() - t0
    held_out = emoji.held_out_renders(load_label_space().keys, seed=args.split_seed)
    records = emoji.split_records(build.records, load_label_space().keys, seed=args.split_seed)["train"]
    by_key = {c.key: c for c in concepts}
    key_ids = {c.key: i for i, c in enumerate(concepts)}
    images = load_images(records)
    cids = torch.tensor([key_ids[r.key] for r in records])
    print(f"{len(records)} training images of {len({r.key for r in records})} concepts, "
          f"{sum(map(len, held_out.values()))} held out "
          f"(skipped per style {build.skipped}); data {t_data:.1f}s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    tok_dir = args.out / "tokenizer"
    train_tokenizer(concepts, tok_dir, args.vocab, args.context)
    model_cfg = model_config(args)
    name = "bayesvlm-emoji-vit-tiny"
    model = bundled.build_bundled_model(model_cfg)
    tokenizer = bundled.bundled_tokenizer({**model_cfg["text_cfg"], "hf_tokenizer_name": str(tok_dir.resolve())})
    assert type(model) is open_clip.CLIP and isinstance(model.text_projection, torch.nn.Parameter)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {name}: {n_params / 1e6:.2f}M params", flush=True)

    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    g = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    n = len(records)
    total_steps = args.steps or 10**9
    calibrate = not args.steps
    budget_s = args.minutes * 60.0
    log: list[dict] = []
    perm = torch.randperm(n, generator=g)
    pos = 0
    step = 0
    t_train = time.perf_counter()
    while step < total_steps:
        if pos + args.batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + args.batch_size]
        pos += args.batch_size
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        if step >= args.warmup and not (calibrate and step < 30):
            frac = (step - args.warmup) / max(1, total_steps - args.warmup)
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        model.train()
        x = normalise(augment(images[idx], g))
        texts = [emoji.sample_caption(by_key[records[int(i)].key], rng) for i in idx]
        tokens = tokenizer(texts)
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        loss = clip_loss(img, txt, model.logit_scale.exp().clamp(max=100), cids[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        if calibrate and step == 30:
            per_step = (time.perf_counter() - t_train) / step
            total_steps = max(args.warmup + 50, int(budget_s / per_step))
            print(f"calibrated: {per_step:.2f} s/step -> {total_steps} steps "
                  f"({total_steps * args.batch_size / n:.1f} epochs)", flush=True)
        if step % 25 == 0 or step == total_steps or step == 10:
            el = time.perf_counter() - t_train
            print(f"step {step}/{total_steps} loss {loss.item():.3f} lr {lr:.2e} "
                  f"scale {model.logit_scale.exp().item():.1f} {el / 60:.1f} min", flush=True)
            log.append({"step": step, "loss": round(loss.item(), 4), "minutes": round(el / 60, 2)})
        if args.eval_every and step % args.eval_every == 0 and step < total_steps:
            ev = evaluate(model, tokenizer, concepts, args.cache_dir, args.size, args.seed, full=False,
                          split_seed=args.split_seed)
            print(f"  eval step {step}: in-domain aug top1 {ev['in_domain_aug']['top1']:.3f} "
                  f"clean top1 {ev['in_domain_clean']['top1']:.3f}", flush=True)
            log.append({"step": step, "eval_in_domain_aug_top1": round(ev["in_domain_aug"]["top1"], 4),
                        "eval_in_domain_clean_top1": round(ev["in_domain_clean"]["top1"], 4)})
    train_s = time.perf_counter() - t_train

    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if args.fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    from safetensors.torch import save_file

    save_file(state, str(args.out / "open_clip_model.safetensors"))
    (args.out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_config(args.size)}, indent=2) + "\n"
    )
    t_eval = time.perf_counter()
    metrics = evaluate(model, tokenizer, concepts, args.cache_dir, args.size, args.seed, full=True,
                       split_seed=args.split_seed)
    eval_s = time.perf_counter() - t_eval
    print(json.dumps(metrics, indent=1), flush=True)
    summary = {
        "model_name": name,
        "seed": args.seed,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n_params": n_params,
        "train_styles": list(emoji.TRAIN_STYLES),
        "n_train_images": n,
        "n_concepts": len({r.key for r in records}),
        "skipped_concepts_per_style": build.skipped,
        "steps": step,
        "epochs": round(step * args.batch_size / n, 2),
        "train_minutes": round(train_s / 60, 2),
        "total_minutes": round((time.perf_counter() - t_start) / 60, 2),
        "eval_seconds": round(eval_s, 1),
        "recipe": {
            "loss": "symmetric InfoNCE, multi-positive targets for same-concept pairs in a batch",
            "optimizer": "AdamW betas (0.9, 0.98), eps 1e-6, wd on matrices only, grad-norm clip 1.0",
            "schedule": f"linear warmup {args.warmup} steps, cosine to 0",
            "augmentation": "zoom 0.75-1.1, aspect +-10%, shift +-12%, rotate +-12 deg (white fill), "
                            "brightness/contrast +-20%, saturation +-30%, 10% grayscale; no flips",
            "captions": "50% 'an emoji of {label}', else label + 0-3 shuffled CLDR tags "
                        "(+ subgroup words 25%, 'an emoji of' prefix 30%)",
            "tokenizer": f"WordPiece, vocab <= {args.vocab}, lower-case, trained on emojibase captions",
            "threads": args.threads,
        },
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "open_clip": open_clip.__version__, "cpu": platform.processor() or platform.machine()},
        "metrics": metrics,
        "log": log,
        "splits": {
            "unit": "render (style/key); per label-space class one training-style render held out, "
                    "alternately to calibration and test (tools.emoji.splits)",
            "seed": args.split_seed,
            "held_out": held_out,
            "train": sorted(emoji.render_id(r.style, r.key) for r in records),
        },
    }
    (args.out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}; train {train_s / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
