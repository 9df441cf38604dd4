import numpy as np
import pytest
import torch

from fusionctl.data import Split
from fusionctl.eval.barrier import barrier, line_ts
from fusionctl.eval.grid import evaluate_points, flatten, float_keys, unflatten
from fusionctl.eval.metrics import evaluate
from fusionctl.eval.plane import grid_coords, plane_basis
from fusionctl.fusion import fuse
from fusionctl.fusion.transport import relative_coupling, transport
from fusionctl.ot.permutation import dense
from tests.helpers import mlp, outputs, permutation_couplings, settings, spec_of

WIDTHS = [10, 8]


def toy_split(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return Split(x, torch.randint(0, 5, (n,), generator=g))


def test_barrier_of_convex_path_is_zero_and_of_planted_bump_is_its_height():
    ts = line_ts(25)
    assert barrier(ts, (ts - 0.3) ** 2) == pytest.approx(0.0, abs=1e-12)
    chord = 2.0 + 3.0 * ts
    assert barrier(ts, chord + 0.7 * np.sin(np.pi * ts)) == pytest.approx(0.7)
    assert barrier(ts, np.full(25, 5.0)) == 0.0
    with pytest.raises(ValueError):
        line_ts(1)


def test_vmapped_points_equal_one_at_a_time_evaluation():
    a, b, c = (mlp(WIDTHS, True, seed=s) for s in range(3))
    sa = {k: v.detach() for k, v in a.state_dict().items()}
    keys = float_keys(sa)
    origin = flatten(sa, keys)
    dirs = torch.stack([flatten(m.state_dict(), keys) - origin for m in (b, c)])
    coords = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.3, 0.5], [-0.2, 1.1]])
    split = toy_split()
    res = evaluate_points(a, sa, origin, dirs, coords, {"test": split}, chunk=2, batch_size=64)
    for p, cc in enumerate(coords):
        state = unflatten((origin + cc @ dirs)[None], sa, keys)
        model = mlp(WIDTHS, True)
        model.load_state_dict({k: v[0] for k, v in state.items()})
        loss, acc = evaluate(model, split, batch_size=64)
        assert res["test"]["loss"][p] == pytest.approx(loss, rel=1e-5)
        assert res["test"]["accuracy"][p] == pytest.approx(acc)


def test_same_model_line_has_zero_barrier():
    a = mlp(WIDTHS, True)
    sa = {k: v.detach() for k, v in a.state_dict().items()}
    keys = float_keys(sa)
    origin = flatten(sa, keys)
    ts = line_ts(9)
    res = evaluate_points(a, sa, origin, torch.zeros(1, origin.numel()), torch.tensor(ts)[:, None].float(), {"s": toy_split()})
    assert barrier(ts, res["s"]["loss"].numpy()) == pytest.approx(0.0, abs=1e-6)


def test_plane_basis_is_orthonormal_and_models_land_where_expected():
    g = torch.Generator().manual_seed(0)
    w0, w1, w2 = (torch.randn(50, generator=g) for _ in range(3))
    plane = plane_basis(w0, w1, w2)
    assert float(plane.u.norm()) == pytest.approx(1.0, abs=1e-5)
    assert float(plane.v.norm()) == pytest.approx(1.0, abs=1e-5)
    assert float(plane.u @ plane.v) == pytest.approx(0.0, abs=1e-5)
    assert plane.coords(w0) == pytest.approx((0.0, 0.0), abs=1e-5)
    assert plane.coords(w2) == pytest.approx((plane.dx, 0.0), abs=1e-4)
    x1, y1 = plane.coords(w1)
    assert y1 == pytest.approx(plane.dy, abs=1e-4)
    # the grid point (alpha, beta) = (1, 0) is model 2 exactly; w1 is in the plane
    assert torch.allclose(w0 + plane.dx * plane.u, w2, atol=1e-4)
    assert torch.allclose(w0 + x1 * plane.u + y1 * plane.v, w1, atol=1e-4)
    assert grid_coords(21, 0.25)[[0, 10, -1]] == pytest.approx([-0.25, 0.5, 1.25])


@pytest.mark.parametrize("seed", [0, 1])
def test_relative_coupling_maps_a_permuted_copy_back_onto_model_1(seed):
    spec = spec_of(WIDTHS, True)
    state = {k: v.detach() for k, v in mlp(WIDTHS, True).state_dict().items()}
    _, permuted = permutation_couplings(spec, state, seed=seed + 3)
    res = fuse("wb", spec, [state, permuted], [0.5, 0.5], spec.group_sizes(state), settings(), None)
    rel = {g: relative_coupling(res.couplings[0][g], res.couplings[1][g]) for g in spec.groups}
    for g, p in rel.items():  # the index formula of two permutations is the dense product's
        p = dense(p)
        assert torch.equal(p, relative_coupling(dense(res.couplings[0][g]), dense(res.couplings[1][g])))
        n = p.shape[0]
        assert torch.allclose(p.sum(0), torch.full((n,), 1 / n, dtype=p.dtype))
        assert torch.allclose(p.sum(1), torch.full((n,), 1 / n, dtype=p.dtype))
    back = transport(permuted, spec, rel)
    for k in state:
        assert torch.allclose(back[k], state[k], atol=1e-6)
    x = torch.randn(16, 1, 6, 6)
    assert torch.allclose(outputs("mlp", WIDTHS, True, back, x), outputs("mlp", WIDTHS, True, permuted, x), atol=1e-5)


def test_a_per_point_transform_is_applied_to_each_point_before_it_is_evaluated():
    # the transform is the one switch for post-steps at every point (BN reset, REPAIR): a BN
    # net's points evaluated with it equal each point's network reset by hand
    from fusionctl.config import ModelConfig
    from fusionctl.fusion.post import reset_bn_stats
    from fusionctl.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig("vgg11", [4, 4, 6, 6, 6, 6, 6, 6, 5, 5], True, True)
    a, b = (build_model(cfg, (3, 8, 8), 4).eval() for _ in range(2))
    x = torch.randn(48, 3, 8, 8)
    data = Split(x, torch.randint(0, 4, (48,)))
    sa, sb = ({k: v.clone() for k, v in m.state_dict().items()} for m in (a, b))  # evaluate_points loads points into `a`
    keys = float_keys(sa)
    origin, direction = flatten(sa, keys), (flatten(sb, keys) - flatten(sa, keys))[None]
    ts = torch.tensor([[0.0], [0.3], [1.0]])
    seen = []

    def transform(model, coords):
        seen.append(float(coords[0]))
        reset_bn_stats(model, data)

    res = evaluate_points(a, sa, origin, direction, ts, {"d": data}, transform=transform)
    assert seen == pytest.approx([0.0, 0.3, 1.0])
    for p, t in enumerate(ts[:, 0].tolist()):
        m = build_model(cfg, (3, 8, 8), 4)
        m.load_state_dict({k: (1 - t) * sa[k] + t * sb[k] if sa[k].is_floating_point() else sa[k] for k in sa})
        reset_bn_stats(m, data)
        loss, acc = evaluate(m.eval(), data)
        assert float(res["d"]["loss"][p]) == pytest.approx(loss, rel=1e-4)
    plain = evaluate_points(a, sa, origin, direction, ts, {"d": data})
    assert not torch.allclose(plain["d"]["loss"], res["d"]["loss"]), "the transform must change what is evaluated"


def test_points_whose_extrapolated_running_variances_go_negative_are_clamped_and_reported(caplog):
    from fusionctl.config import ModelConfig
    from fusionctl.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig("vgg11", [4, 4, 6, 6, 6, 6, 6, 6, 5, 5], True, True)
    a, b = (build_model(cfg, (3, 8, 8), 4).eval() for _ in range(2))
    sa, sb = ({k: v.clone() for k, v in m.state_dict().items()} for m in (a, b))
    for k in sa:
        if k.endswith("running_var"):
            sa[k].fill_(0.1)
            sb[k].fill_(2.0)  # at t = -0.5: 1.5 * 0.1 - 0.5 * 2 < 0
    keys = float_keys(sa)
    origin, direction = flatten(sa, keys), (flatten(sb, keys) - flatten(sa, keys))[None]
    data = Split(torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,)))
    with caplog.at_level("WARNING"):
        res = evaluate_points(a, sa, origin, direction, torch.tensor([[-0.5], [0.5]]), {"d": data}, desc="line")
    assert torch.isfinite(res["d"]["loss"]).all()
    assert "1 of 2 points (line) extrapolate BatchNorm running variances below 0" in caplog.text
    m = build_model(cfg, (3, 8, 8), 4)
    m.load_state_dict({k: 0.5 * sa[k] + 0.5 * sb[k] if sa[k].is_floating_point() else sa[k] for k in sa})
    assert float(res["d"]["loss"][1]) == pytest.approx(evaluate(m.eval(), data)[0], rel=1e-4)  # points inside are untouched


def test_the_plane_figure_leaves_diverged_points_blank():
    from fusionctl.plots import plane_figure

    values = np.array([[1.0, 2.0, np.nan], [1.5, np.inf, 3.0], [2.0, 2.5, 4.0]])
    markers = {"model 1": (0.0, 0.0), "model 2": (2.0, 0.0), "permuted model 2": (1.0, 2.0)}
    fig = plane_figure(values, np.arange(3.0), np.arange(3.0), markers, "loss", "title")
    fig.canvas.draw()  # Figure with no backend: Agg is the default canvas


def test_barrier_figure_names_each_panel_by_split_and_metric_and_each_curve_by_line_and_post():
    import pandas as pd

    from fusionctl.plots import barrier_figure

    rows = [(line, post, t, split, metric, 1.0 + t) for line in ("naive 1-2", "aligned 1-2") for post in ("none", "repair")
            for t in (0.0, 0.5, 1.0) for split in ("train", "test") for metric in ("loss", "error")]
    fig = barrier_figure(pd.DataFrame(rows, columns=["line", "post", "t", "split", "metric", "value"]), "title")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["train cross-entropy loss", "test cross-entropy loss", "train error (%)", "test error (%)"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["naive 1-2", "naive 1-2 +repair", "aligned 1-2", "aligned 1-2 +repair"]


def test_fusion_figure_shows_each_fused_model_test_accuracy_and_names_what_produced_it():
    import pandas as pd

    from fusionctl.plots import fusion_figure

    rows = [("base", "base", "none", "one-shot", "", 0.90), ("base", "base", "none", "one-shot", "", 0.80),
            ("ensemble", "ensemble", "none", "one-shot", "", 0.92), ("fused", "wb", "none", "one-shot", "sweeps=0", 0.70),
            ("fused", "wb", "repair", "one-shot", "sweeps=0", 0.75), ("fused", "wm", "none", "one-shot", "defaults", 0.60),
            ("fused", "wm", "repair", "one-shot", "defaults", 0.65), ("fused", "wb", "none", "finetuned", "sweeps=0", 0.88),
            ("base", "base", "none", "finetuned", "", 0.95)]
    table = pd.DataFrame([(*r[:5], split, acc if split == "test" else 1.0) for *r, acc in rows for split in ("train", "test")],
                         columns=["role", "method", "post", "stage", "settings", "split", "accuracy"])
    ax = fusion_figure(table, "title").axes[0]
    points = [[round(float(y), 6) for y in line.get_ydata()] for line in ax.lines if line.get_linestyle() == "None"]
    assert points == [[70.0, 60.0], [75.0, 65.0], [88.0]]  # one-shot, +repair, finetuned; test split only
    assert [t.get_text() for t in ax.get_xticklabels()] == ["wb\nsweeps=0", "wm"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["one-shot", "+repair", "finetuned", "base models (90.0, 80.0)", "base models, finetuned (95.0)",
                      "prediction ensemble (92.0)"]


def test_evaluation_shows_its_progress_on_a_terminal_only(monkeypatch):
    """A model evaluated on a large split (fuse evaluates every model on the whole training set)
    draws a progress bar where stderr is a terminal, and writes nothing to a log file."""
    import io
    import sys

    from fusionctl.eval.metrics import evaluate_with_proba

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    model, split = mlp(WIDTHS, True), toy_split()
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        loss, acc, _ = evaluate_with_proba(model, split, batch_size=64, keep_proba=False, desc="evaluate wb on train")
        assert ("evaluate wb on train" in stream.getvalue() and "/300" in stream.getvalue()) == shown, stream.getvalue()
        assert (loss, acc) == evaluate(model, split, batch_size=64)
