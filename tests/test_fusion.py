import pytest
import torch

from fusionctl.config import ModelConfig
from fusionctl.data import Split, Splits
from fusionctl.errors import FusionctlError
from fusionctl.fusion import METHODS, FusionContext, fuse
from fusionctl.fusion.transport import transport
from fusionctl.jobs.activations import activation_probe
from fusionctl.jobs.bases import fusion_weights
from fusionctl.models.spec import Axis, apply_along, node_slices
from tests.helpers import mlp, outputs, permutation_couplings, settings, spec_of

X = torch.randn(64, 1, 6, 6)


def toy_splits():
    y = torch.zeros(64, dtype=torch.long)
    return Splits("toy", Split(X, y), Split(X[:8], y[:8]), Split(X[:8], y[:8]), (1, 6, 6), 5)
WIDTHS = [10, 8, 7]


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def random_target(widths, bias, seed=5):
    return FusionContext(random_target=lambda: state_of(mlp(widths, bias, seed=seed)))


@pytest.mark.parametrize("bias", [True, False])
def test_transport_by_exact_couplings_preserves_outputs(bias):
    state = state_of(mlp(WIDTHS, bias))
    spec = spec_of(WIDTHS, bias)
    couplings, permuted = permutation_couplings(spec, state)
    assert not torch.allclose(permuted["layers.0.weight"], state["layers.0.weight"])
    assert torch.allclose(outputs("mlp", WIDTHS, bias, permuted, X), outputs("mlp", WIDTHS, bias, state, X), atol=1e-5)


def test_an_axis_with_copies_per_head_moves_each_copy_as_its_block():
    """Axis.mid: an axis laid out (heads, mid, d) over a group of (heads, d) units (grouped-query
    attention's query rows). A soft coupling and a permutation move every copy r as the block's
    units move, and node_slices lists the units in the group's order with the copies as features."""
    torch.manual_seed(0)
    t = torch.randn(2 * 3 * 2, 5)  # 2 heads, 3 copies, 2 channels per head
    ax = Axis("g", mid=3, heads=2)
    per_copy = t.view(2, 3, 2, 5).transpose(0, 1).reshape(3, 4, 5)  # copy r: the (heads, d) units' rows
    soft = torch.rand(4, 4).softmax(1)
    expected = (soft @ per_copy).reshape(3, 2, 2, 5).transpose(0, 1).reshape(12, 5)
    assert torch.allclose(apply_along(t, 0, ax, soft, dense=True), expected, atol=1e-6)
    perm = torch.tensor([3, 2, 0, 1])  # swap the heads and the channels of one
    moved = apply_along(t, 0, ax, torch.eye(4)[perm])
    assert torch.equal(moved, per_copy[:, perm].reshape(3, 2, 2, 5).transpose(0, 1).reshape(12, 5))
    assert torch.equal(apply_along(t, 0, ax, None, perm), moved)
    assert torch.equal(node_slices(t, 0, ax), per_copy.transpose(0, 1).reshape(4, 15))
    assert ax.nodes(12) == 4


def test_a_soft_coupling_moves_rows_by_its_row_map_and_columns_by_its_column_map_in_each_dtype():
    """T(theta) under a soft coupling (METHOD.md A.6): a layer's rows are mass-weighted averages
    (P / P 1), the next layer's columns split by P / 1^T P; the maps are kept while the coupling
    lives (not saved with it), and a float64 entry after a float32 one is still moved in float64."""
    import io

    from fusionctl.fusion.transport import _DERIVED, along

    g = torch.Generator().manual_seed(3)
    p = torch.rand(5, 4, generator=g, dtype=torch.float64)
    w_in, w_out = torch.randn(4, 3, generator=g), torch.randn(2, 4, generator=g)
    rows = along(w_in, 0, Axis("g"), p, rows=True)
    assert torch.allclose(rows, ((p / p.sum(1, keepdim=True)) @ w_in.double()).float(), atol=1e-6)
    assert torch.equal(along(w_in, 0, Axis("g"), p, rows=True), rows)  # from the cached map
    cols = along(w_out.double(), 1, Axis("g"), p, rows=False)
    assert cols.dtype == torch.float64
    assert torch.allclose(cols, w_out.double() @ (p / p.sum(0, keepdim=True)).T, rtol=1e-12, atol=1e-12)
    big = torch.rand(64, 64, generator=g, dtype=torch.float64)
    along(torch.randn(64, 3, generator=g), 0, Axis("g"), big, rows=True)
    saved, plain = io.BytesIO(), io.BytesIO()
    torch.save({"g": big}, saved)
    torch.save({"g": big.clone()}, plain)
    assert len(saved.getvalue()) < len(plain.getvalue()) + 1000  # a 64 x 64 map would add 16 KiB
    key = id(p)
    assert ("map", True, torch.float32) in _DERIVED[key][1]
    del p
    assert key not in _DERIVED


def test_transport_with_a_wrong_coupling_changes_outputs():
    # Guard against a test that cannot fail: permuting only one group breaks the function.
    state = state_of(mlp(WIDTHS, True))
    spec = spec_of(WIDTHS, True)
    couplings, _ = permutation_couplings(spec, state)
    broken = transport(state, spec, {"h2": couplings["h2"]})
    broken["layers.2.weight"] = state["layers.2.weight"]
    assert not torch.allclose(outputs("mlp", WIDTHS, True, broken, X), outputs("mlp", WIDTHS, True, state, X), atol=1e-3)


# every aligning method of the registry (am and zipit need activations: tests/test_matching.py, tests/test_zipit.py), with both OT solvers where it has one
ALIGNERS = [(m, ot) for m in METHODS if m not in ("avg", "am", "zipit") for ot in (("exact", "sinkhorn") if "ot" in vars(METHODS[m].settings()) else ("-",))]


@pytest.mark.parametrize("method, ot_method", ALIGNERS)
@pytest.mark.parametrize("bias", [True, False])
def test_fusing_a_model_with_its_permuted_copy_returns_it(method, ot_method, bias):
    state = state_of(mlp(WIDTHS, bias))
    spec = spec_of(WIDTHS, bias)
    _, permuted = permutation_couplings(spec, state, seed=7)
    solver = settings(name=method, **({} if ot_method == "-" else {"ot": ot_method, "reg": 1e-4}))
    res = fuse(method, spec, [state, permuted], [0.5, 0.5], spec.group_sizes(state), solver, None)
    for key in state:
        assert torch.allclose(res.state[key], state[key], atol=1e-4), key
    # The permuted copy, transported by its coupling, is model 0 again.
    back = transport(permuted, spec, res.couplings[1])
    assert torch.allclose(outputs("mlp", WIDTHS, bias, back, X), outputs("mlp", WIDTHS, bias, state, X), atol=1e-4)


def test_naive_average_of_permuted_copy_is_not_the_model():
    state = state_of(mlp(WIDTHS, True))
    spec = spec_of(WIDTHS, True)
    _, permuted = permutation_couplings(spec, state, seed=7)
    res = fuse("avg", spec, [state, permuted], [0.5, 0.5], spec.group_sizes(state), settings(name="avg"), None)
    assert not torch.allclose(outputs("mlp", WIDTHS, True, res.state, X), outputs("mlp", WIDTHS, True, state, X), atol=1e-2)


@pytest.mark.parametrize("method", list(METHODS))
def test_fusing_k_identical_models_returns_it(method):
    state = state_of(mlp(WIDTHS, True))
    spec = spec_of(WIDTHS, True)
    ctx = FusionContext(activations=activation_probe(ModelConfig("mlp", WIDTHS, True), toy_splits()))
    res = fuse(method, spec, [state] * 4, [0.1, 0.2, 0.3, 0.4], spec.group_sizes(state), settings(name=method), ctx)
    for key in state:
        assert torch.allclose(res.state[key], state[key], atol=1e-6)


def test_wb_of_different_models_is_between_them():
    a, b = state_of(mlp(WIDTHS, True, seed=1)), state_of(mlp(WIDTHS, True, seed=2))
    spec = spec_of(WIDTHS, True)
    res = fuse("wb", spec, [a, b], [0.5, 0.5], spec.group_sizes(a), settings(), None)
    # the fused model is the average of the two transported models
    ta, tb = (transport(s, spec, c) for s, c in zip([a, b], res.couplings))
    for key in a:
        assert torch.allclose(res.state[key], 0.5 * ta[key] + 0.5 * tb[key], atol=1e-6)
    assert all(info["converged"] for info in res.info.values())


def duplicated(state, spec, factor=2):
    """A `factor`-times wider network computing the same function: units copied, outgoing weights split."""
    out = {}
    for key, v in state.items():
        axes = spec.axes[key]
        t = v
        if axes[0] is not None:
            t = t.repeat_interleave(factor, 0)
        if len(axes) > 1 and axes[1] is not None:
            t = t.repeat_interleave(factor, 1) / factor
        out[key] = t
    return out


@pytest.mark.parametrize("ot_method", ["exact", "sinkhorn"])
def test_fusion_into_a_wider_target_keeps_outputs_with_biases(ot_method):
    # E.2-2: projecting into a 2x wider target must not multiply pre-activations by 2.
    model = mlp(WIDTHS, True)
    state = state_of(model)
    spec = spec_of(WIDTHS, True)
    wide = [2 * w for w in WIDTHS]
    sizes = dict(zip(spec.groups, wide))
    solver = settings(ot=ot_method, reg=1e-4, init="distill")
    res = fuse("wb", spec, [state], [1.0], sizes, solver, random_target(wide, True))
    assert res.state["layers.0.weight"].shape == (2 * WIDTHS[0], 36)
    assert torch.allclose(outputs("mlp", wide, True, res.state, X), outputs("mlp", WIDTHS, True, state, X), atol=1e-3)


def test_fusion_into_a_narrower_target_recovers_a_duplicated_network():
    state = state_of(mlp(WIDTHS, True))
    spec = spec_of(WIDTHS, True)
    wide_state = duplicated(state, spec)
    wide = [2 * w for w in WIDTHS]
    assert torch.allclose(outputs("mlp", wide, True, wide_state, X), outputs("mlp", WIDTHS, True, state, X), atol=1e-5)
    sizes = dict(zip(spec.groups, WIDTHS))
    res = fuse("wb", spec, [wide_state, wide_state], [0.5, 0.5], sizes, settings(init="distill"), random_target(WIDTHS, True))
    assert torch.allclose(outputs("mlp", WIDTHS, True, res.state, X), outputs("mlp", WIDTHS, True, state, X), atol=1e-4)


def test_bases_of_different_widths_fuse_into_either_width():
    a = state_of(mlp(WIDTHS, True, seed=1))
    wide = [w + 3 for w in WIDTHS]
    b = state_of(mlp(wide, True, seed=2))
    spec = spec_of(WIDTHS, True)
    for target in (WIDTHS, wide):
        sizes = dict(zip(spec.groups, target))
        res = fuse("wb", spec, [a, b], [0.5, 0.5], sizes, settings(), random_target(target, True))
        assert res.state["layers.1.weight"].shape == (target[1], target[0])
        for c, s in zip(res.couplings, (a, b)):
            assert c["h1"].shape == (target[0], s["layers.0.weight"].shape[0])


def test_init_model0_with_other_widths_is_a_clear_error():
    state = state_of(mlp(WIDTHS, True))
    spec = spec_of(WIDTHS, True)
    sizes = dict(zip(spec.groups, [5, 5, 5]))
    with pytest.raises(FusionctlError, match="solver.init=distill"):
        fuse("wb", spec, [state, state], [0.5, 0.5], sizes, settings(init="model0"), random_target([5, 5, 5], True))
    with pytest.raises(FusionctlError, match="same widths"):
        fuse("avg", spec, [state, state], [0.5, 0.5], sizes, settings(name="avg"), None)


def test_weights_shift_the_fused_model_towards_the_heavier_base():
    a, b = state_of(mlp(WIDTHS, True, seed=1)), state_of(mlp(WIDTHS, True, seed=2))
    spec = spec_of(WIDTHS, True)
    sizes = spec.group_sizes(a)
    res = fuse("wb", spec, [a, b], [1.0, 0.0], sizes, settings(), None)
    for key in a:
        assert torch.allclose(res.state[key], a[key], atol=1e-6)


@pytest.mark.parametrize("weights, message", [
    ([1.0], "one weight per model"),
    ([-1.0, 2.0], "non-negative"),
    ([0.0, 0.0], "positive sum"),
    ([float("nan"), 1.0], "non-negative"),
])
def test_bad_weights_are_rejected(weights, message):
    with pytest.raises(FusionctlError, match=message):
        fusion_weights(weights, 2)


def test_weights_are_normalised():
    assert fusion_weights([1, 3], 2) == [0.25, 0.75]
    assert fusion_weights(None, 4) == [0.25] * 4
