import pytest
import torch

from fusionctl.ot import free_support_barycenter, solve_ot, sq_distances
from fusionctl.ot.barycenter import coupling_change, plan_cost, plan_cost_parts
from fusionctl.ot.permutation import Permutation, dense, inner, same
from fusionctl.ot.solver import SINKHORN_TOL


def planted(n=12, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    return x, perm


def test_exact_ot_recovers_planted_permutation():
    x, perm = planted(30)
    y = x[perm]  # y[k] = x[perm[k]]
    plan = solve_ot(sq_distances(x, y), "exact")
    assert isinstance(plan, Permutation), "between equal sizes an exact plan is held as its index"
    p = plan.dense()
    assert torch.allclose(p.sum(1), torch.full((30,), 1 / 30, dtype=torch.float64))
    assert ((p > 0).sum(1) == 1).all(), "exact OT between equal uniform measures must be a permutation"
    matched = p.argmax(1)  # x[j] is coupled to y[matched[j]]
    assert torch.equal(perm[matched], torch.arange(30))


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_coupling_marginals_rectangular(method):
    g = torch.Generator().manual_seed(1)
    c = torch.rand(7, 11, generator=g, dtype=torch.float64)
    p = solve_ot(c, method, reg=0.05)
    # exact: both marginals to round-off; sinkhorn stops once the row error (L1, mass 1) is
    # below SINKHORN_TOL * reg, and its last update makes the columns exact
    row_tol = 1e-9 if method == "exact" else SINKHORN_TOL * 0.05
    assert float((p.sum(1) - 1 / 7).abs().sum()) <= row_tol
    assert torch.allclose(p.sum(0), torch.full((11,), 1 / 11, dtype=torch.float64), atol=1e-9)
    assert (p >= 0).all()


@pytest.mark.parametrize("blocks", [2, 3])
def test_block_assignment_is_the_best_permutation_that_keeps_blocks_whole(blocks):
    """Against every permutation of 6 nodes that maps each block onto one block (brute force)."""
    import itertools

    import numpy as np

    from fusionctl.ot.solver import assignment

    rng, n, d = np.random.default_rng(blocks), 6, 6 // blocks
    for _ in range(10):
        c = rng.normal(size=(n, n))
        whole = [p for p in itertools.permutations(range(n)) if all(len({p[a * d + r] // d for r in range(d)}) == 1 for a in range(blocks))]
        best = min(c[np.arange(n), list(p)].sum() for p in whole)
        got = assignment(c, blocks)
        assert tuple(got) in set(whole) and np.isclose(c[np.arange(n), got].sum(), best, rtol=0, atol=1e-12)


@pytest.mark.parametrize("blocks", [2, 3])
def test_whole_block_assignment_is_the_best_permutation_of_blocks_that_keeps_every_place(blocks):
    """within=False (rotary heads): against every permutation of the blocks, each node keeping its
    place in its block (brute force); solve_ot under Sinkhorn gives the same permutation."""
    import itertools

    import numpy as np

    from fusionctl.ot.solver import assignment

    rng, n, d = np.random.default_rng(blocks), 6, 6 // blocks
    for _ in range(10):
        c = rng.normal(size=(n, n))
        whole = [np.concatenate([np.arange(d) + b * d for b in order]) for order in itertools.permutations(range(blocks))]
        best = min(c[np.arange(n), p].sum() for p in whole)
        got = assignment(c, blocks, within=False)
        assert any(np.array_equal(got, p) for p in whole) and np.isclose(c[np.arange(n), got].sum(), best, rtol=0, atol=1e-12)
        plan = solve_ot(torch.from_numpy(c), "sinkhorn", reg=0.05, blocks=blocks, within=False)
        assert np.array_equal(dense(plan).argmax(1).numpy(), got)


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_heads_are_recovered_as_a_permutation_of_heads_and_within_heads(method):
    """A planted permutation of 4 heads of 5 channels (and of the channels inside each) comes back
    exactly, and as a permutation even when the method is Sinkhorn."""
    g = torch.Generator().manual_seed(0)
    heads, d = 4, 5
    perm = torch.cat([h * d + torch.randperm(d, generator=g) for h in torch.randperm(heads, generator=g).tolist()])
    x = torch.randn(heads * d, 3, generator=g, dtype=torch.float64)
    y = x[perm] + 0.01 * torch.randn(heads * d, 3, generator=g, dtype=torch.float64)
    p = dense(solve_ot(sq_distances(x, y), method, reg=0.05, blocks=heads))
    assert torch.equal(perm[p.argmax(1)], torch.arange(heads * d)) and ((p > 0).sum(1) == 1).all()
    with pytest.raises(ValueError, match="needs the same width"):
        solve_ot(torch.rand(20, 24, dtype=torch.float64), blocks=4)


def test_exact_ot_is_optimal_against_scipy_assignment():
    from scipy.optimize import linear_sum_assignment

    c = torch.rand(25, 25, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p = solve_ot(c, "exact")
    rows, cols = linear_sum_assignment(c.numpy())
    assert float((p.dense() * c).sum()) == pytest.approx(float(c[rows, cols].sum()) / 25, rel=1e-12)
    assert inner(p, c) == pytest.approx(float((p.dense() * c).sum()), rel=1e-12)


def test_sinkhorn_with_zero_cost_is_uniform_not_nan():
    p = solve_ot(torch.zeros(4, 6, dtype=torch.float64), "sinkhorn", reg=1e-3)
    assert torch.isfinite(p).all()
    assert torch.allclose(p, torch.full((4, 6), 1 / 24, dtype=torch.float64))


def test_sinkhorn_small_reg_approaches_permutation():
    x, perm = planted(20)
    p = solve_ot(sq_distances(x, x[perm]), "sinkhorn", reg=1e-3)
    assert torch.equal(perm[p.argmax(1)], torch.arange(20))
    assert float(p.max(1).values.min()) * 20 > 0.99


def test_sinkhorn_rejects_nonpositive_reg():
    with pytest.raises(ValueError, match="reg > 0"):
        solve_ot(torch.rand(3, 3, dtype=torch.float64), "sinkhorn", reg=0.0)


def test_barycenter_of_identical_measures_is_the_measure():
    x, _ = planted(15)
    res = free_support_barycenter([x, x, x], [0.2, 0.3, 0.5], init=x)
    assert torch.allclose(res.support, x)
    assert res.converged and res.cost == pytest.approx(0.0, abs=1e-12)


def test_barycenter_of_permuted_copies_recovers_permutations():
    x, _ = planted(15)
    perms = [torch.randperm(15, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    ys = [x[p] for p in perms]
    res = free_support_barycenter(ys, [1 / 3] * 3, init=ys[0])
    assert torch.allclose(res.support, ys[0])
    for y, p in zip(ys, res.couplings):
        assert torch.allclose(15 * dense(p) @ y, ys[0])


def test_barycenter_is_mean_for_two_point_clouds_in_order():
    # Two clouds that are small perturbations of each other: the matching is the identity and
    # the barycenter is the lambda-weighted mean, point by point.
    x, _ = planted(10)
    y = x + 0.01 * torch.randn_like(x)
    res = free_support_barycenter([x, y], [0.25, 0.75], init=x)
    assert torch.allclose(res.support, 0.25 * x + 0.75 * y)


def test_barycenter_is_invariant_to_measure_order():
    g = torch.Generator().manual_seed(3)
    ys = [torch.randn(9, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    w = [0.5, 0.3, 0.2]
    a = free_support_barycenter(ys, w, init=ys[0])
    b = free_support_barycenter(ys[::-1], w[::-1], init=ys[0])
    assert torch.allclose(a.support, b.support)


def test_aligned_cost_differs_from_tlp_cost_by_a_per_column_constant():
    # METHOD.md A.2's TLp cost sum_ab P(a,b)(X[j,a] - W[k,b])^2 and our |X_j - W P~^T_k|^2
    # (scaled by 1/n) differ by a function of k only, so OT picks the same couplings.
    g = torch.Generator().manual_seed(4)
    n, m_prev = 8, 6
    xbar = torch.randn(n, m_prev, generator=g, dtype=torch.float64)
    w = torch.randn(n, m_prev, generator=g, dtype=torch.float64)
    # a soft coupling with exact uniform marginals: a mixture of permutations / m_prev
    mix = torch.rand(3, generator=g, dtype=torch.float64)
    pin = sum(w / mix.sum() * torch.eye(m_prev, dtype=torch.float64)[torch.randperm(m_prev, generator=g)] for w in mix) / m_prev
    tlp = ((xbar[:, None, :, None] - w[None, :, None, :]) ** 2 * pin[None, None]).sum((2, 3))
    mapped = w @ (pin / pin.sum(0, keepdim=True)).T
    ours = sq_distances(xbar, mapped) / m_prev
    diff = tlp - ours
    assert torch.allclose(diff - diff[0:1], torch.zeros_like(diff), atol=1e-10)
    assert same(solve_ot(tlp, "exact"), solve_ot(ours, "exact"))


@pytest.mark.parametrize("shape", [(16, 16), (9, 14)])
def test_exact_plan_on_inner_products_is_optimal_for_squared_distances(shape):
    """plan_cost gives exact OT -<x, y>: squared distances less row and column terms, which no
    plan between fixed marginals sees (LAP when square, network simplex otherwise)."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(shape[0], 6, generator=g, dtype=torch.float64), torch.randn(shape[1], 6, generator=g, dtype=torch.float64)
    c = sq_distances(x, y)
    p, q = dense(solve_ot(plan_cost(x, y, "exact"), "exact")), dense(solve_ot(c, "exact"))
    assert float((p * c).sum()) == pytest.approx(float((q * c).sum()), rel=1e-12)
    assert torch.equal(plan_cost(x, y, "sinkhorn"), c), "Sinkhorn's blur depends on the cost's scale: it keeps squared distances"


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_a_cost_from_scaled_parts_is_the_cost_of_their_concatenation(method):
    """plan_cost_parts folds each part's scales into its product: the same cost as plan_cost on
    x = [a_s x_s], y = [b_s y_s] (a sweep's slices, weighted by key and by n_i / m)."""
    g = torch.Generator().manual_seed(8)
    dims, a, b = (5, 1, 7), (1.0, 0.5, 2.0), (0.25, 3.0, 1.0)
    xs = [torch.randn(9, d, generator=g, dtype=torch.float64) for d in dims]
    ys = [torch.randn(11, d, generator=g, dtype=torch.float64) for d in dims]
    whole = plan_cost(torch.cat([x * s for x, s in zip(xs, a)], 1), torch.cat([y * s for y, s in zip(ys, b)], 1), method)
    assert torch.allclose(plan_cost_parts(list(zip(xs, a)), list(zip(ys, b)), method), whole, rtol=1e-12, atol=1e-12)
    first = plan_cost_parts(list(zip(xs[:1], a[:1])), list(zip(ys[:1], b[:1])), method)  # a sum of costs, part by part
    summed = plan_cost_parts(list(zip(xs[1:], a[1:])), list(zip(ys[1:], b[1:])), method, out=first)
    assert summed is first and torch.allclose(summed, whole, rtol=1e-12, atol=1e-12)


def _pot_plan(c, reg, stop=1e-13):
    import ot

    n, m = c.shape
    return ot.sinkhorn(torch.full((n,), 1 / n, dtype=torch.float64), torch.full((m,), 1 / m, dtype=torch.float64), c / c.max(), reg,
                       method="sinkhorn_log", numItermax=100_000, stopThr=stop)


def _within_promise(p, q, c, reg):
    """The stop rule's promise (solver.py): on the max-normalised cost, <P, C> within a hundredth of the blur epsilon."""
    return abs(float(((p - q) * c / c.max()).sum())) <= SINKHORN_TOL * reg


def test_sinkhorn_agrees_with_pot_log_domain():
    c = torch.rand(9, 13, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    p = solve_ot(c, "sinkhorn", reg=0.05, sinkhorn_iter=10_000)
    q = _pot_plan(c, 0.05)
    assert _within_promise(p, q, c, 0.05)
    assert float((p - q).abs().max()) < 1e-2 * float(q.max())  # and the same plan, entry by entry, to 1 %


def test_sinkhorn_from_potentials_far_off_rescues_empty_rows():
    """A warm start whose kernel exp((f + g - C) / eps) underflows to zero in whole rows (a
    previous problem's potentials, shifted) still ends at the problem's plan, finite."""
    from fusionctl.ot.solver import Potentials

    c = torch.rand(9, 13, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    f = torch.zeros(9, dtype=torch.float64)
    f[:4] = -50.0  # exp(-50 / 0.01) == 0: rows 0-3 of the first kernel have no mass
    warm = Potentials(f, torch.zeros(13, dtype=torch.float64))
    p = solve_ot(c, "sinkhorn", reg=0.01, sinkhorn_iter=10_000, warm=warm)
    assert torch.isfinite(p).all() and warm.converged
    assert _within_promise(p, _pot_plan(c, 0.01), c, 0.01)


def test_sinkhorn_on_a_cost_far_below_zero_does_not_overflow():
    """C / max(C) down to -800: the first kernel exp(-C / eps) overflows to inf; the solve
    falls back to a log-domain iteration and ends at the problem's plan (POT's, to 1e-5 of
    <P, C>: the stop rule's promise, relative to max(C), says little on such a cost), finite."""
    c = torch.rand(9, 13, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 801 - 800
    c[0, 0] = 1.0  # max(C) = 1, so the cost is its own normalisation
    p = solve_ot(c, "sinkhorn", reg=0.05, sinkhorn_iter=10_000)
    q = _pot_plan(c, 0.05, stop=1e-10)  # as tight as POT gets on this cost
    assert torch.isfinite(p).all() and float((p.sum(1) - 1 / 9).abs().sum()) <= SINKHORN_TOL * 0.05
    assert float(((p - q) * c).sum()) == pytest.approx(0.0, abs=1e-5 * abs(float((q * c).sum())))


def test_sinkhorn_absorbing_scalings_leaves_the_plan(monkeypatch):
    """Scalings absorbed into the potentials after every iteration (the bound at 1.01, so each
    leaves it): the same plan as with the bound far off, within the stop rule's promise."""
    from fusionctl.ot import solver

    c = torch.rand(12, 10, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    loose = solve_ot(c, "sinkhorn", reg=0.02, sinkhorn_iter=10_000)
    monkeypatch.setattr(solver, "SCALING_BOUND", 1.01)
    tight = solve_ot(c, "sinkhorn", reg=0.02, sinkhorn_iter=10_000)
    q = _pot_plan(c, 0.02)
    assert _within_promise(loose, q, c, 0.02) and _within_promise(tight, q, c, 0.02)


@pytest.mark.parametrize("cap", [1, 2, 5])
def test_sinkhorn_stops_at_its_iteration_cap(cap):
    """sinkhorn_iter counts every iteration, scaling and log-domain alike: a hard problem stops there, unconverged."""
    from fusionctl.ot.solver import Potentials

    x, perm = planted(40)
    warm = Potentials()
    p = solve_ot(sq_distances(x, x[perm]), "sinkhorn", reg=1e-3, sinkhorn_iter=cap, warm=warm)
    assert warm.iterations == cap and not warm.converged and torch.isfinite(p).all()


@pytest.mark.parametrize("cap", [1, 2])
def test_sinkhorn_at_its_cap_from_far_off_potentials_still_gives_a_coupling(cap):
    """Warm potentials of a solve stopped at epsilon 1, read at epsilon 1e-3: the first kernel
    overflows or has no mass, and a cap of one or two iterations must still end on a plan of the
    measures (finite, columns exact), as a log-domain iteration would leave it."""
    from fusionctl.ot.solver import Potentials

    g = torch.Generator().manual_seed(0)
    c = sq_distances(torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randn(40, 5, generator=g, dtype=torch.float64))
    warm = Potentials()
    for _ in range(3):
        p = solve_ot(c, "sinkhorn", reg=1e-3, sinkhorn_iter=cap, warm=warm)
        assert torch.isfinite(p).all() and warm.iterations == cap
        assert torch.allclose(p.sum(0), torch.full((40,), 1 / 40, dtype=torch.float64), atol=1e-12)


def test_known_permutations_change_like_dense_plans():
    g = torch.Generator().manual_seed(5)
    a, b = (solve_ot(torch.rand(8, 8, generator=g, dtype=torch.float64), "exact") for _ in range(2))
    assert not same(a, b) and same(a, a.dense()) and a.T.dense().equal(a.dense().T)
    for p, q in ((a, b), (a, a), (a, a.dense()), (a.dense(), b.dense())):  # index vectors, and the dense path
        assert coupling_change([p], [q]) == float((dense(p) - dense(q)).abs().max()) * 8


def test_only_the_identity_is_known_as_one():
    """A transport by an identity is skipped (permutation.identity); any moved node disqualifies it."""
    assert Permutation(torch.arange(6)).identity
    assert not Permutation(torch.tensor([0, 1, 2, 3, 5, 4])).identity
    assert Permutation(torch.arange(6)).T.identity


# -c for two copies of a 6-unit layer against it (an inner-product cost): POT's network simplex
# calls this feasible problem infeasible and returns an all-zero plan unless the cost is shifted
NEAR_DUPLICATE_ROWS = [
    [-7.3474, -7.7355, -8.8486, -7.6362, -8.0794, -7.793], [-7.7572, -8.2906, -7.7355, -7.538, -7.3133, -7.8794],
    [-7.3828, -7.3133, -8.0794, -7.8189, -9.0104, -7.69], [-7.6454, -7.538, -7.6362, -9.3845, -7.8189, -7.5215],
    [-7.3358, -7.8794, -7.793, -7.5215, -7.69, -8.8533], [-7.6454, -7.538, -7.6362, -9.3845, -7.8189, -7.5215],
    [-8.6531, -7.7572, -7.3474, -7.6454, -7.3828, -7.3358], [-7.3358, -7.8794, -7.793, -7.5215, -7.69, -8.8533],
    [-7.7572, -8.2906, -7.7355, -7.538, -7.3133, -7.8794], [-7.3828, -7.3133, -8.0794, -7.8189, -9.0104, -7.69],
    [-7.3474, -7.7355, -8.8486, -7.6362, -8.0794, -7.793], [-8.6531, -7.7572, -7.3474, -7.6454, -7.3828, -7.3358],
]


def test_exact_rectangular_ot_on_a_negative_cost_is_an_optimal_plan():
    from scipy.optimize import linprog

    cost = torch.tensor(NEAR_DUPLICATE_ROWS, dtype=torch.float64)
    plan = solve_ot(cost, "exact")
    assert torch.allclose(plan.sum(1), torch.full((12,), 1 / 12, dtype=torch.float64))
    assert torch.allclose(plan.sum(0), torch.full((6,), 1 / 6, dtype=torch.float64))
    rows = [[1.0 if j // 6 == i else 0.0 for j in range(72)] for i in range(12)]
    cols = [[1.0 if j % 6 == i else 0.0 for j in range(72)] for i in range(6)]
    best = linprog(cost.flatten().numpy(), A_eq=rows + cols, b_eq=[1 / 12] * 12 + [1 / 6] * 6, bounds=(0, None)).fun
    assert float((plan * cost).sum()) == pytest.approx(best, abs=1e-9)


def test_an_exact_solve_that_returns_no_plan_is_one_clear_error(monkeypatch):
    import numpy as np

    from fusionctl.errors import FusionctlError
    from fusionctl.ot import solver

    monkeypatch.setattr(solver.ot, "emd", lambda a, b, c, **kw: (np.zeros((len(a), len(b))), {"warning": "Problem infeasible"}))
    with pytest.raises(FusionctlError, match=r"exact OT \(3x2\) failed: Problem infeasible; fuse with solver.ot=sinkhorn"):
        solve_ot(torch.randn(3, 2), "exact")
