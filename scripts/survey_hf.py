"""Trace every causal language model of Hugging Face transformers at a tiny size and run the spec's self-check.

    .venv/bin/pip install transformers   # not a dependency of fusionctl
    .venv/bin/python scripts/survey_hf.py [--archs llama mistral ...] [--timeout 30]

Per architecture (`transformers`' causal-LM mapping, or --archs): the config shrunk to 2 layers,
hidden size 32, 4 heads (2 key/value heads), vocabulary 128, random init, eager attention, no
cache; traced on two sequences of 8 token ids, then fusionctl's permutation self-check
(fusion/spec_check.py: a float64 copy, every group permuted at random; round-off measured at the
lowest precision the model computes in), the experts of a mixture moved where that check confirms
it, as fusionctl.derive_spec does. Prints the coverage and the check per model, WRONG where
the check fails, and the counts at the end. A config that cannot be shrunk, built or run on the
inputs this way is counted apart ("not built or not run"): that is this script's limit, not the
tracer's.
"""

from __future__ import annotations

import argparse
import collections
import signal
import time
import warnings

import torch

from fusionctl.fusion.spec_check import check_permutation, with_experts
from fusionctl.models.trace import TraceError, derive_spec

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 128, "max_position_embeddings": 64, "head_dim": 8, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64, "n_positions": 64, "ffn_dim": 64, "word_embed_proj_dim": 32,
        "num_local_experts": 4, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "rotary_dim": 4}


MAX_ENTRIES = 5_000_000


class Timeout(BaseException):
    """Not an Exception: code that catches those lets it through."""


def tiny_model(arch: str):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import is_grouped_mm_available

    cfg = AutoConfig.for_model(arch)
    for key, value in TINY.items():
        if key in cfg.to_dict() or key in getattr(cfg, "attribute_map", {}):
            try:
                setattr(cfg, key, value)
            except (AttributeError, TypeError):  # a read-only property
                pass
    cfg._attn_implementation = "eager"
    cfg.use_cache = False
    with torch.device("meta"):  # sizes this script cannot shrink (other names for them) would build a large model
        entries = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    if entries > MAX_ENTRIES:
        raise ValueError(f"{entries:,} parameters after shrinking the sizes it knows")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    if getattr(model.config, "_experts_implementation", None) == "eager" and not is_grouped_mm_available():
        model.config._experts_implementation = "batched_mm"  # torch < 2.9: eager experts loop over those a batch hits (untraceable)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="*", help="model types (default: every causal LM transformers knows)")
    ap.add_argument("--timeout", type=int, default=30, help="seconds per model for tracing and the check")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = args.archs or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: {len(archs)} architectures", flush=True)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Timeout()))
    counts, reasons = collections.Counter(), collections.Counter()
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    for arch in archs:
        start = time.perf_counter()
        signal.alarm(args.timeout)
        try:
            model = tiny_model(arch)
            with torch.no_grad():
                model(ids)
        except (Exception, Timeout) as exc:  # noqa: BLE001 - this script's shrinking, not the tracer
            signal.alarm(0)
            counts["not built or not run"] += 1
            print(f"{arch:24s} not built or not run: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}", flush=True)
            continue
        try:
            spec, confirmed = with_experts(derive_spec(model, ids), model, ids, arch)  # as fusionctl.derive_spec does
            check = confirmed or check_permutation(model, spec, ids)
        except Timeout:
            counts["timeout"] += 1
            print(f"{arch:24s} over {args.timeout} s", flush=True)
            continue
        except TraceError as exc:
            counts["not traced"] += 1
            print(f"{arch:24s} not traced: {str(exc)[:200]}", flush=True)
            continue
        finally:
            signal.alarm(0)
        cov = spec.coverage
        full = cov.permutable == cov.hidden and cov.hidden > 0
        counts["traced"] += 1
        counts["fully permutable" if full else "partly" if cov.permutable else "nothing permutable"] += 1
        counts["unchecked" if check.skipped else "checked"] += 1
        counts["experts moved"] += bool(cov.experts)
        if check.wrong:
            counts["WRONG"] += 1
        reasons.update(set(cov.frozen))
        verdict = "WRONG " if check.wrong else ""
        experts = f"; experts of {cov.experts} mixture{'s' * (cov.experts > 1)} moved" if cov.experts else ""
        print(f"{arch:24s} {time.perf_counter() - start:5.1f}s {cov.permutable:,} of {cov.hidden:,}{experts}; {verdict}{check}"
              + (f"; frozen: {'; '.join(cov.frozen)}" if cov.frozen else ""), flush=True)
    print("\n" + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    print("most common reasons to freeze (models):", "; ".join(f"{r} ({n})" for r, n in reasons.most_common(8)))


if __name__ == "__main__":
    main()
