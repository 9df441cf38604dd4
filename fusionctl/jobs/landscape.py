"""`fusionctl landscape`: barrier curves along straight lines and the 2-D plane through
model 1, model 2 and permuted model 2 (METHOD.md C)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusionctl.config import LandscapeCommandConfig, ModelConfig
from fusionctl.data import Splits
from fusionctl.device import resolve_device
from fusionctl.errors import FusionctlError
from fusionctl.eval.barrier import barrier, line_ts
from fusionctl.eval.grid import evaluate_points, flatten, float_keys, has_batchnorm
from fusionctl.eval.metrics import logits_of
from fusionctl.eval.plane import grid_coords, plane_basis
from fusionctl.fusion import check_aligns
from fusionctl.fusion.transport import relative_coupling, transport
from fusionctl.jobs.fuse import prepare, run_method, save_fused
from fusionctl.fusion.post import POST_STEPS, reset_bn_stats
from fusionctl.jobs.post import check_post, repair_biases
from fusionctl.models import architecture, build_from_state
from fusionctl.ot.permutation import Permutation
from fusionctl.plots import barrier_figure, plane_figure, save
from fusionctl.store import atomic_path, write_csv_atomic
from fusionctl.versions import versions

log = logging.getLogger(__name__)


@dataclass
class Line:
    name: str
    start: dict[str, torch.Tensor]
    end: dict[str, torch.Tensor]
    model_cfg: ModelConfig
    output_diff: float = float("nan")  # for aligned lines: max |f(theta_i) - f(T(theta_i))|
    post: str = "none"  # a post-step applied at every point of the line


def validate(cfg: LandscapeCommandConfig) -> None:
    lc = cfg.landscape
    if lc.points < 2:
        raise FusionctlError(f"landscape.points must be >= 2 (the end points), got {lc.points}")
    if lc.grid < 2 and lc.plane:
        raise FusionctlError(f"landscape.grid must be >= 2, got {lc.grid}; or set landscape.plane=false")
    if lc.margin < 0 or lc.chunk < 1 or lc.batch_size < 1:
        raise FusionctlError("landscape.margin must be >= 0 and landscape.chunk, landscape.batch_size >= 1")
    if lc.train_samples < 0 or lc.test_samples < 0:
        raise FusionctlError("landscape.train_samples and landscape.test_samples must be >= 0 (0 = the whole split)")
    check_aligns(cfg.solver.name, "fusionctl landscape")


def output_difference(model_cfg, splits: Splits, a, b, device) -> float:
    x = splits.test.x[:256].to(device)
    with torch.inference_mode():
        outputs = [logits_of(build_from_state(model_cfg, splits, state, device)(x)) for state in (a, b)]
        return float((outputs[0] - outputs[1]).abs().max())


def is_permutation(coupling) -> bool:
    if isinstance(coupling, Permutation):
        return True
    n, m = coupling.shape
    return n == m and bool(((coupling * n - 1).abs() < 1e-6).sum() == n)


def make_lines(bases, spec, couplings, fused_state, fused_cfg, splits, device) -> list[Line]:
    first = bases[0]
    lines = []
    for i, b in enumerate(bases[1:], start=1):
        rel = {g: relative_coupling(couplings[0][g], couplings[i][g]) for g in spec.groups}
        permuted = transport(b.state, spec, rel)
        same = spec.group_sizes(b.state) == spec.group_sizes(first.state)
        if same:
            lines.append(Line(f"naive 1-{i + 1}", first.state, b.state, first.model_cfg))
        exact = same and all(is_permutation(p) for p in rel.values())
        diff = output_difference(b.model_cfg, splits, b.state, permuted, device) if same else float("nan")
        if exact:
            log.info("permuted model %d vs model %d: largest output difference %.3g (exact permutation)", i + 1, i + 1, diff)
        else:
            log.warning("couplings for model %d are not a permutation (soft or different widths): permuted model %d "
                        "is not function-preserving (largest output difference %.3g); use solver.ot=exact for LMC", i + 1, i + 1, diff)
        lines.append(Line(f"aligned 1-{i + 1}", first.state, permuted, first.model_cfg, diff))
    if len(bases) > 2:
        for i, b in enumerate(bases):
            lines.append(Line(f"aligned {i + 1}-fused", transport(b.state, spec, couplings[i]), fused_state, fused_cfg))
    return lines


def line_transform(line: Line, spec, splits, device):
    """(config, start, end, per-point transform) for a line: its post-step applied at every point,
    with the end points' statistics mixed by t (REPAIR's references are the two end points)."""
    cfg, start, end = line.model_cfg, line.start, line.end
    if line.post == "none":
        return cfg, start, end, None
    if line.post == "repair":
        cfg, start, (end,) = repair_biases(cfg, start, [end], spec, splits)
    ends = [build_from_state(cfg, splits, start, device), build_from_state(cfg, splits, end, device)]
    step = POST_STEPS[line.post]

    def transform(model, coords):
        t = float(coords[0])
        step(model, spec, ends, [1.0 - t, t], splits.train, device)

    return cfg, start, end, transform


def evaluate_lines(lines: list[Line], ts: np.ndarray, eval_splits, splits, spec, lc, device) -> pd.DataFrame:
    rows = []
    coords = torch.tensor(ts, dtype=torch.float32)[:, None]
    for line in lines:
        cfg, start, end, transform = line_transform(line, spec, splits, device)
        keys = float_keys(start)
        origin = flatten(start, keys)
        direction = (flatten(end, keys) - origin)[None]
        model = build_from_state(cfg, splits, start, device)
        res = evaluate_points(model, start, origin, direction, coords, eval_splits, chunk=lc.chunk, batch_size=lc.batch_size,
                              transform=transform, device=device, desc=f"{line.name} {line.post}")
        rows += curve_rows(line, ts, res)
    return pd.DataFrame(rows)


def curve_rows(line: Line, ts, res) -> list[dict]:
    rows = []
    for split, r in res.items():
        for t, loss, acc in zip(ts, r["loss"].tolist(), r["accuracy"].tolist()):
            rows += [{"line": line.name, "post": line.post, "t": t, "split": split, "metric": m, "value": v}
                     for m, v in (("loss", loss), ("accuracy", 100 * acc), ("error", 100 * (1 - acc)))]
    return rows


def summarise_lines(curves: pd.DataFrame, lines: list[Line]) -> pd.DataFrame:
    rows = []
    diffs = {line.name: line.output_diff for line in lines}
    for (name, post, split), df in curves.groupby(["line", "post", "split"], sort=False):
        get = lambda m: df[df.metric == m].sort_values("t")  # noqa: E731
        loss, err, acc = get("loss"), get("error"), get("accuracy")
        rows.append({
            "line": name, "post": post, "split": split,
            "loss_barrier": barrier(loss.t.to_numpy(), loss.value.to_numpy()),
            "error_barrier": barrier(err.t.to_numpy(), err.value.to_numpy()),
            "start_accuracy": acc.value.iloc[0], "end_accuracy": acc.value.iloc[-1],
            "midpoint_accuracy": float(np.interp(0.5, acc.t, acc.value)),
            "max_output_diff": diffs.get(name, float("nan")),
        })
    return pd.DataFrame(rows)


def compute_plane(bases, spec, couplings, fused_state, eval_splits, splits, lc, device, out_dir: Path, title: str, reset_bn: bool) -> dict:
    """The plane through model 1, model 2 and permuted model 2; reset_bn: BatchNorm statistics
    recomputed at every point (REPAIR needs two end points, a plane point has three)."""
    first, second = bases[0], bases[1]
    rel = {g: relative_coupling(couplings[0][g], couplings[1][g]) for g in spec.groups}
    keys = float_keys(first.state)
    w0, w2 = flatten(first.state, keys), flatten(second.state, keys)
    w1 = flatten(transport(second.state, spec, rel), keys)
    plane = plane_basis(w0, w1, w2)
    alphas = grid_coords(lc.grid, lc.margin)
    aa, bb = np.meshgrid(alphas, alphas)  # rows: beta, cols: alpha
    coords = torch.tensor(np.stack([aa.ravel(), bb.ravel()], 1), dtype=torch.float32)
    directions = torch.stack([plane.dx * plane.u, plane.dy * plane.v])
    model = build_from_state(first.model_cfg, splits, first.state, device)
    start = time.perf_counter()
    res = evaluate_points(model, first.state, w0, directions, coords, eval_splits, chunk=lc.chunk, batch_size=lc.batch_size,
                          transform=(lambda m, c: reset_bn_stats(m, splits.train, device=device)) if reset_bn else None, device=device, desc="plane")
    seconds = time.perf_counter() - start
    n_samples = sum(len(s) for s in eval_splits.values())
    log.info("plane: %d points x %d samples in %.1fs (%.3g point-samples/s)", len(coords), n_samples, seconds, len(coords) * n_samples / seconds)
    shape = (lc.grid, lc.grid)
    values = {f"{split}_{m}": r[m].numpy().reshape(shape) for split, r in res.items() for m in ("loss", "accuracy")}
    markers = {"model 1": (0.0, 0.0), "model 2": (plane.dx, 0.0), "permuted model 2": plane.coords(w1)}
    back = {g: couplings[0][g].T for g in spec.groups}  # barycenter -> model 1's order
    fused_in_1 = transport(fused_state, spec, back)
    if all(fused_in_1[k].shape == first.state[k].shape for k in keys):
        markers["fused model (projected)"] = plane.coords(flatten(fused_in_1, keys))
    xs, ys = alphas * plane.dx, alphas * plane.dy
    with atomic_path(out_dir / "plane.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, alpha=alphas, beta=alphas, x=xs, y=ys, dx=plane.dx, dy=plane.dy,
                     marker_names=np.array(list(markers)), marker_xy=np.array(list(markers.values())), **values)
    train_loss = values["train_loss"]
    test_error = 100 * (1 - values["test_accuracy"])
    save(plane_figure(train_loss, xs, ys, markers, "train loss (cross-entropy)", f"train loss\n{title}"), out_dir / "plane_train_loss")
    save(plane_figure(test_error, xs, ys, markers, "test error (%)", f"test error\n{title}"), out_dir / "plane_test_error")
    return {"plane_seconds": seconds, "plane_points": len(coords), "plane_samples": n_samples}


def run_landscape(cfg: LandscapeCommandConfig, out_dir: Path) -> tuple[pd.DataFrame, dict]:
    validate(cfg)
    check_post(cfg.post, cfg.model.name)
    lc = cfg.landscape
    splits, bases, spec, lambdas, target_cfg = prepare(replace(cfg, baselines=[]))
    if len(bases) < 2:
        raise FusionctlError("the landscape needs at least two base models; give two or more seeds")
    device = resolve_device(cfg.device)
    fused = run_method(cfg.solver.name, cfg, splits, bases, spec, lambdas, target_cfg)
    save_fused(fused, splits, bases, lambdas, out_dir)
    eval_splits = {"train": splits.train.head(lc.train_samples), "test": splits.test.head(lc.test_samples)}
    lines = make_lines(bases, spec, fused.result.couplings, fused.result.state, fused.model_cfg, splits, device)
    lines += [replace(line, post=step) for step in cfg.post for line in list(lines) if line.name.endswith("1-2")]
    ts = line_ts(lc.points)
    curves = evaluate_lines(lines, ts, eval_splits, splits, spec, lc, device)
    table = summarise_lines(curves, lines)
    meta = {"solver": cfg.solver.name, "settings": fused.settings_label, "ot": getattr(cfg.solver, "ot", ""), "dataset": splits.name, "model": bases[0].model_cfg.name,
            "seeds": "+".join(b.label for b in bases), **versions()}
    table = table.assign(**meta)
    write_csv_atomic(curves, out_dir / "barrier.csv")
    write_csv_atomic(table, out_dir / "barriers.csv")
    title = f"{splits.name}, {architecture(bases[0].model_cfg)}, solver={cfg.solver.name} ({fused.settings_label})"
    save(barrier_figure(curves, title), out_dir / "barrier")
    info = {}
    if lc.plane:
        if spec.group_sizes(bases[1].state) != spec.group_sizes(bases[0].state):
            log.warning("skipping the plane: model 1 and model 2 have different widths")
        else:
            reset_bn = bool(cfg.post) and has_batchnorm(build_from_state(bases[0].model_cfg, splits, bases[0].state))
            info = compute_plane(bases, spec, fused.result.couplings, fused.result.state, eval_splits, splits, lc, device, out_dir, title, reset_bn)
    return table, info
