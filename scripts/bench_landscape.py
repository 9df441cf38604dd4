"""Plane throughput against the raw forward throughput of one model, measured in one process.

(a) raw: one model's batched forward pass (with the loss) over the evaluation samples, in samples/s;
(b) plane: the G x G grid evaluated with fusionctl's vmapped evaluator, in (points x samples)/s.
The ratio b/a says how close the plane gets to the speed of evaluating one model at a time
with no overhead; the target is >= 0.8.

    .venv/bin/python scripts/bench_landscape.py [--grid 21] [--widths 400 200 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fusionctl.data import load_dataset
from fusionctl.eval.grid import evaluate_points, flatten, float_keys
from fusionctl.eval.plane import grid_coords, plane_basis
from fusionctl.config import ModelConfig
from fusionctl.models import build_model


def raw_throughput(model, splits, batch_size, repeats):
    model.eval()
    n = sum(len(s) for s in splits)
    with torch.inference_mode():
        for s in splits:  # warm-up
            model(s.x[:batch_size])
        start = time.perf_counter()
        for _ in range(repeats):
            for s in splits:
                for b in range(0, len(s), batch_size):
                    logits = model(s.x[b : b + batch_size])
                    F.cross_entropy(logits, s.y[b : b + batch_size], reduction="sum")
                    (logits.argmax(1) == s.y[b : b + batch_size]).sum()
        return repeats * n / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=21)
    ap.add_argument("--widths", type=int, nargs="+", default=[400, 200, 100])
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("mnist_small")
    if args.device != "cpu":
        for s in (data.train, data.test):
            s.x, s.y = s.x.to(args.device), s.y.to(args.device)
    splits = {"train": data.train, "test": data.test}
    models = [build_model(ModelConfig("mlp", args.widths, False), data.input_shape, 10).to(args.device) for _ in range(3)]
    states = [{k: v.detach() for k, v in m.state_dict().items()} for m in models]
    keys = float_keys(states[0])
    plane = plane_basis(*(flatten(s, keys) for s in states))
    alphas = grid_coords(args.grid, 0.25)
    coords = torch.cartesian_prod(torch.tensor(alphas), torch.tensor(alphas)).float()
    directions = torch.stack([plane.dx * plane.u, plane.dy * plane.v])

    raw = raw_throughput(models[0], list(splits.values()), args.batch_size, repeats=3)
    start = time.perf_counter()
    evaluate_points(models[0], states[0], plane.origin, directions, coords, splits, chunk=args.chunk,
                    batch_size=args.batch_size, device=args.device)
    seconds = time.perf_counter() - start
    # the baseline is measured before and after; the faster of the two is the stricter reference
    raw = max(raw, raw_throughput(models[0], list(splits.values()), args.batch_size, repeats=3))
    n = sum(len(s) for s in splits.values())
    plane_rate = len(coords) * n / seconds
    print(f"device={args.device} threads={torch.get_num_threads()} mlp {args.widths} samples={n}")
    print(f"(a) raw forward, one model:  {raw:12.4g} samples/s")
    print(f"(b) plane {args.grid}x{args.grid}:          {plane_rate:12.4g} point-samples/s  ({seconds:.1f} s)")
    print(f"ratio b/a: {plane_rate / raw:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
