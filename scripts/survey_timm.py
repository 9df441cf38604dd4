"""Trace one model per timm name prefix and check that a random permutation of every group keeps its function.

    .venv/bin/pip install timm   # in the test extra
    .venv/bin/python scripts/survey_timm.py [--families 40] [--timeout 20] [--side 64]

Per name prefix (a timm model name up to the first '_', trailing digits dropped: a rough family)
it takes the smallest-named variant (tiny, small, nano, ... first), random init, float64 (some
random-init nets are chaotic enough that float32 rounding alone moves their outputs), a random
classifier head (timm zero-inits some), and 64x64 inputs unless the model needs its own size
(or cannot run at 64: then its own size). Prints the coverage and the relative output change per
model, flags changes above 1e-6 as WRONG (chaotic instead when 1e-14 noise in the weights moves
the output by a hundredth of that), and ends with the counts and the most common reasons
for freezing. About 10 minutes for all prefixes on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import signal
import warnings

import torch

from bench_trace import permuted_change  # scripts/ is on the path when this script runs
from fusionctl.models.trace import TraceError, derive_spec

SMALL = ("tiny", "small", "nano", "pico", "atto", "femto", "xs", "_t")


class Timeout(BaseException):
    """Not an Exception: code that catches those (load_state_dict, the tracer's run) lets it through."""


def one_per_family(names: list[str]) -> list[str]:
    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(name.split("_")[0].rstrip("0123456789"), []).append(name)
    return [min(ms, key=lambda m: (not any(s in m for s in SMALL), len(m), m)) for ms in families.values()]


def check(timm, arch: str, side: int) -> tuple[float, float, object]:
    model = timm.create_model(arch, pretrained=False, num_classes=10).eval().double()
    g = torch.Generator().manual_seed(0)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.normal_(head.weight, generator=g)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    side = cfg.get("input_size", (3, 224, 224))[-1] if cfg.get("fixed_input_size") else side
    x = torch.randn(1, 3, side, side, dtype=torch.float64, generator=g)
    try:
        spec = derive_spec(model, x)
    except TraceError as exc:  # the model cannot run at this side (patch sizes, fixed grids): its own size
        own = cfg.get("input_size", (3, 224, 224))
        if not str(exc).startswith("running") or tuple(x.shape[1:]) == tuple(own):
            raise
        x = torch.randn(1, *own, dtype=torch.float64, generator=g)
        spec = derive_spec(model, x)
    change = permuted_change(model, spec, x)
    return change, noise_change(model, x) if change > 1e-6 else 0.0, spec.coverage


@torch.no_grad()
def noise_change(model, x) -> float:
    """The relative output change from 1e-14 relative noise in every weight: how chaotic the
    random-init net is, so a large permuted change can be told from a wrong spec."""
    g = torch.Generator().manual_seed(1)
    before = model(x)
    for p in model.parameters():
        p.mul_(1 + 1e-14 * torch.randn(p.shape, dtype=p.dtype, generator=g))
    return float((model(x) - before).abs().max() / before.abs().max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", type=int, default=0, help="only the first N name prefixes (0: all)")
    ap.add_argument("--timeout", type=int, default=20, help="seconds per model")
    ap.add_argument("--side", type=int, default=64, help="input image side for models without a fixed size")
    args = ap.parse_args()
    import timm

    warnings.filterwarnings("ignore")
    archs = one_per_family(timm.list_models())[: args.families or None]
    counts, reasons = collections.Counter(), collections.Counter()

    def expire(*_):
        raise Timeout

    signal.signal(signal.SIGALRM, expire)
    for arch in archs:
        signal.alarm(args.timeout)
        try:
            change, noise, cov = check(timm, arch, args.side)
        except Timeout:
            counts["timed out"] += 1
            print(f"{arch}: timed out after {args.timeout}s", flush=True)
            continue
        except Exception as exc:  # fx control flow, fixed input sizes, ...
            counts["not traced"] += 1
            print(f"{arch}: not traced ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})", flush=True)
            continue
        finally:
            signal.alarm(0)
        verdict = "unchecked (zero output)" if change != change else "" if change <= 1e-6 else \
            f"chaotic (1e-14 noise in the weights: {noise:.1e})" if change < 100 * noise else "WRONG"
        counts["wrong" if verdict == "WRONG" else "fully permutable" if cov.permutable == cov.hidden else "partly frozen"] += 1
        reasons.update({r.split(" at ")[0] for r in cov.frozen})  # once per model
        print(f"{arch}: change {change:.1e} {verdict}  {cov}"[:300], flush=True)
    print(f"\n{len(archs)} name prefixes: " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
    print("most common reasons to freeze (models): " + "; ".join(f"{r} ({n})" for r, n in reasons.most_common(8)))


if __name__ == "__main__":
    main()
