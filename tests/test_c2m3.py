"""solver=c2m3: Frank-Wolfe on weight matching's pairwise objective through a universe (fusion/c2m3.py)."""

from __future__ import annotations

import pytest
import torch

from fusionctl.config import solver_settings
from fusionctl.fusion import fuse
from fusionctl.fusion.c2m3 import frank_wolfe, pairwise_objective
from fusionctl.fusion.transport import relative_coupling
from fusionctl.models import model_spec
from fusionctl.ot.permutation import same
from tests.test_sweeps import CNN, MLP, noisy_permuted_copies, outputs, random_states

CASES = [(MLP, (1, 5, 5)), (CNN, (3, 8, 8))]


@pytest.mark.parametrize("cfg, shape", CASES, ids=["mlp", "resnet20-bn"])
def test_c2m3_recovers_every_planted_permutation_of_five_noisy_copies(cfg, shape):
    state = random_states(cfg, 1, shape)[0]
    spec, copies, planted = noisy_permuted_copies(cfg, state, 5, 0.05, shape)
    res = fuse("c2m3", spec, copies, [0.2] * 5, spec.group_sizes(state), solver_settings("c2m3"))
    for i in range(1, 5):
        for group in spec.groups:
            rel = relative_coupling(res.couplings[0][group], res.couplings[i][group])  # model 0's nodes -> copy i's
            assert same(rel, planted[i][group].T), (i, group)


@pytest.mark.parametrize("cfg, shape", CASES, ids=["mlp", "resnet20-bn"])
def test_c2m3_of_a_model_and_permuted_copies_of_itself_returns_its_function(cfg, shape):
    state = random_states(cfg, 1, shape)[0]
    spec, copies, _ = noisy_permuted_copies(cfg, state, 4, 0.0, shape)
    res = fuse("c2m3", spec, copies, [0.1, 0.2, 0.3, 0.4], spec.group_sizes(state), solver_settings("c2m3"))
    x = torch.randn(32, *shape)
    assert torch.allclose(outputs(cfg, res.state, x, shape), outputs(cfg, state, x, shape), atol=1e-5)


def test_no_frank_wolfe_step_lowers_the_objective_and_rounding_gives_permutations():
    states = random_states(MLP, 4)
    spec = model_spec(MLP)
    thetas = [{k: s[k] for k, axes in spec.axes.items() if any(a is not None for a in axes)} for s in states]
    couplings, summary = frank_wolfe(spec, thetas, [0.25] * 4, solver_settings("c2m3", {"max_iter": 30}))
    trace = summary["trace"]
    assert len(trace) > 2 and all(b > a for a, b in zip(trace, trace[1:]))  # only steps that raise F are taken
    assert summary["objective_relaxed"] == trace[-1]
    assert summary["objective"] == pytest.approx(pairwise_objective(spec, thetas, [0.25] * 4, couplings))
    assert all(c[g].index.numel() == spec.group_sizes(states[0])[g] for c in couplings for g in spec.groups)


def test_a_model_of_weight_zero_changes_nothing_and_is_matched_to_the_fusion():
    a, b = random_states(MLP, 2)
    spec, (_, c), (_, planted) = noisy_permuted_copies(MLP, a, 2, 0.0, (1, 5, 5))
    settings = solver_settings("c2m3")
    two = fuse("c2m3", spec, [a, b], [0.5, 0.5], spec.group_sizes(a), settings)
    three = fuse("c2m3", spec, [a, b, c], [0.5, 0.5, 0.0], spec.group_sizes(a), settings)
    assert all(torch.equal(two.state[k], three.state[k]) for k in two.state)
    for group in spec.groups:
        assert same(relative_coupling(three.couplings[0][group], three.couplings[2][group]), planted[group].T), group
