"""Small Hugging Face language models trained from two (or more) seeds on the same text, fused through the Python API.

    .venv/bin/pip install transformers        # not a dependency of fusionctl
    .venv/bin/python scripts/fuse_lms.py [--arch llama|gpt2|mixtral] [--width 64] [--steps 1500] [--seeds 0 1 ...] [--mb 2] [--shared STEPS]
                                         [--post repair] [--experts-in-place]

The text is real and on every machine with Python: the source files of Python's standard library
(sorted by path, the first --mb megabytes), read as bytes (a vocabulary of 256). The last tenth is
held out. Each model (`transformers`' LlamaForCausalLM, GPT2LMHeadModel or MixtralForCausalLM: 2 layers,
width 64 (--width), 4 heads, LLaMA and Mixtral with 2 key/value heads, Mixtral with 4 experts of which each token
takes 2) is trained from its seed with AdamW on windows of 64 bytes,
then the K models are fused by every method with fusionctl.fuse_models, aligned on 16 batches of
training windows (labels per token: the next byte), and evaluated on held-out windows: next-byte
cross-entropy (nats) and accuracy (%). fusionctl.barriers gives the loss and error barriers along
the naive and the aligned line of each method (from the first model to each other). --shared
STEPS: every model goes on from one model trained STEPS steps, each on its own share of the
training text (fine-tuned from one start, as in federated rounds or model soups), where averaging
needs no alignment.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import sysconfig
import time
from pathlib import Path

import torch

import fusionctl
from fusionctl.fusion.post import repair_gaps

METHODS = [("avg", {}), ("wb", {}), ("wb paper", {"sweeps": 0, "cost": "weight"}), ("wm", {}), ("am", {})]
CONTEXT = 64


def corpus(megabytes: float) -> torch.Tensor:
    """The bytes of the standard library's .py files, in path order, up to `megabytes`."""
    limit, parts, size = int(megabytes * 2**20), [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "site-packages" in path.parts or size >= limit:
            continue
        data = path.read_bytes()[: limit - size]
        parts.append(data)
        size += len(data)
    return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8).long()


def windows(text: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random windows: inputs (n, CONTEXT) and their next bytes (n, CONTEXT)."""
    start = torch.randint(0, len(text) - CONTEXT - 1, (n,), generator=g)
    idx = start[:, None] + torch.arange(CONTEXT + 1)
    w = text[idx]
    return w[:, :-1], w[:, 1:]


def build(arch: str, seed: int, width: int = 64):
    try:
        import transformers
    except ImportError:
        sys.exit("this script needs transformers: .venv/bin/pip install transformers")
    if arch == "mixtral":
        cfg = transformers.MixtralConfig(vocab_size=256, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                                         max_position_embeddings=CONTEXT, tie_word_embeddings=False, use_cache=False)
        model_cls = transformers.MixtralForCausalLM
    elif arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                                       tie_word_embeddings=False, use_cache=False)
        model_cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.GPT2Config(vocab_size=256, n_embd=width, n_layer=2, n_head=4, n_positions=CONTEXT, use_cache=False,
                                      bos_token_id=None, eos_token_id=None)  # no special tokens among the 256 bytes
        model_cls = transformers.GPT2LMHeadModel
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return model_cls(cfg)


def train(model, text: torch.Tensor, steps: int, seed: int, batch: int = 32, lr: float = 3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(1000 + seed)
    model.train()
    for _ in range(steps):
        x, y = windows(text, batch, g)
        loss = torch.nn.functional.cross_entropy(model(x).logits.reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


def unigram(train_text: torch.Tensor, data) -> tuple[float, float]:
    """Held-out loss and accuracy of predicting every byte from the training text's byte frequencies
    alone (add-one smoothed): a model that ignores its context scores this (here mostly spaces)."""
    p = torch.bincount(train_text, minlength=256).double() + 1
    p /= p.sum()
    y = torch.cat([t.reshape(-1) for _, t in data])
    return float(-p.log()[y].mean()), 100 * float((y == p.argmax()).double().mean())


@torch.no_grad()
def evaluate(model, data) -> tuple[float, float]:
    loss = hits = n = 0.0
    for x, y in data:
        logits = model(x).logits
        loss += float(torch.nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1), reduction="sum"))
        hits += float((logits.argmax(-1) == y).sum())
        n += y.numel()
    return loss / n, 100 * hits / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["llama", "gpt2", "mixtral"], default="llama")
    ap.add_argument("--width", type=int, default=64, help="hidden size (4 heads; the MLPs twice as wide)")
    ap.add_argument("--experts-in-place", action="store_true", help="mixtral: leave the experts where they are (the spec unchecked: "
                    "derive_spec moves them only where its self-check confirms it)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one model per seed, K >= 2 (barriers: from the first to each other)")
    ap.add_argument("--mb", type=float, default=2.0, help="megabytes of standard-library source read")
    ap.add_argument("--points", type=int, default=9, help="points per barrier line")
    ap.add_argument("--post", choices=["repair"], help="REPAIR every fused model and every point of the lines (GPT-2: all but its "
                    "embeddings, which have no bias; LLaMA has no layer it can correct in)")
    ap.add_argument("--shared", type=int, default=0, metavar="STEPS",
                    help="train one model STEPS steps first; each seed then goes on from it for --steps on its own share of the text")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    text = corpus(args.mb)
    cut = int(0.9 * len(text))
    g = torch.Generator().manual_seed(0)
    align = [windows(text[:cut], 32, g) for _ in range(16)]
    test = [windows(text[cut:], 64, g) for _ in range(8)]
    print(f"{args.arch}: {len(text):,} bytes of Python's standard library ({cut:,} train), {args.steps} steps per model, "
          f"aligned on {16 * 32} training windows, evaluated on {8 * 64} held-out windows of {CONTEXT} bytes")
    loss, acc = unigram(text[:cut], test)
    print(f"  the floor any model should pass: byte frequencies of the training text alone give loss {loss:.3f}, accuracy {acc:.1f} %")
    models, k = [], len(args.seeds)
    if k < 2:
        sys.exit("--seeds: give two or more")
    if args.post:  # before training: LLaMA's layers have no bias for REPAIR's correction
        untrained = build(args.arch, 0, args.width)
        try:
            repair_gaps(fusionctl.derive_spec(untrained, test[0][0][:2]), untrained.state_dict(), "--post repair")
        except fusionctl.FusionctlError as exc:
            sys.exit(f"fuse_lms.py: {exc}")
        logging.getLogger("fusionctl.fusion.post").setLevel(logging.ERROR)  # said once: not again at every fusion
    shared = train(build(args.arch, args.seeds[0], args.width), text[:cut], args.shared, -1) if args.shared else None
    if shared is not None:
        loss, acc = evaluate(shared, test)
        print(f"  shared start ({args.shared} steps): loss {loss:.3f}, accuracy {acc:.1f} %")
    for i, seed in enumerate(args.seeds):
        start = time.perf_counter()
        model, part = (build(args.arch, seed, args.width), text[:cut]) if shared is None else (copy.deepcopy(shared), text[i * cut // k:(i + 1) * cut // k])
        models.append(train(model, part, args.steps, seed))
        loss, acc = evaluate(models[-1], test)
        print(f"  base seed {seed}: loss {loss:.3f}, accuracy {acc:.1f} % (trained in {time.perf_counter() - start:.0f} s)", flush=True)
    spec = fusionctl.derive_spec(models[0], align[0][0][:2], check=not args.experts_in_place)
    print(f"  {spec.coverage}")
    print("\n| method | test loss (nats/byte) | test accuracy (%) | loss barrier | error barrier (pts) | fuse s |\n|---|---|---|---|---|---|")
    naive = None
    for name, settings in METHODS:
        method = name.split()[0]
        start = time.perf_counter()
        fused = fusionctl.fuse_models(models, method=method, data=align, spec=spec, check=False, post=args.post or (), **settings)
        seconds = time.perf_counter() - start
        loss, acc = evaluate(fused, test)
        barrier = "— | —"
        if method != "avg":  # averaging aligns nothing: its line is the naive one, given below
            summary, _ = fusionctl.barriers(models, test, method=method, points=args.points, align_data=align, spec=spec,
                                            check=False, post=args.post, **settings)
            naive = summary[summary.line.str.startswith("naive")].mean(numeric_only=True)  # over the lines from model 1
            aligned = summary[summary.line.str.startswith("aligned")].mean(numeric_only=True)
            barrier = f"{aligned.loss_barrier:.3f} | {aligned.error_barrier:.1f}"
        print(f"| {name} | {loss:.3f} | {acc:.1f} | {barrier} | {seconds:.1f} |", flush=True)
    print(f"\nnaive line{'s θ₁ → θ_k' if k > 2 else ' θ₁ → θ₂'}: loss barrier {naive.loss_barrier:.3f} nats, error barrier {naive.error_barrier:.1f} points "
          f"({args.points} points, held-out windows" + (f"; barriers are means over the {k - 1} lines from model 1)" if k > 2 else ")"))


if __name__ == "__main__":
    main()
