"""Fused BatchNorm variances predicted from the probed correlations (fusion/norm_stats.py)."""

from __future__ import annotations

import torch

from fusionctl.config import ModelConfig
from fusionctl.fusion import FusionContext, fuse
from fusionctl.fusion.barycenter import shared_norm_writers, with_norm_stats
from fusionctl.fusion.engine import fuse_with_couplings
from fusionctl.fusion.transport import permutation_index
from fusionctl.fusion.units import capture_outputs, channel_axis, repair_points, units_first
from fusionctl.jobs.activations import activation_probe
from fusionctl.models import build_model, model_spec
from fusionctl.ot.permutation import same
from tests.helpers import settings
from tests.test_sweeps import noisy_permuted_copies, outputs, random_states, toy_splits

CNN_BN = ModelConfig("resnet20", [6, 8, 10], False, True)
SHAPE = (3, 8, 8)


def with_measured_variances(cfg, state, x):
    """`state` with every norm's running_var set to the population variance of its writer's
    output on x, as that network computes it (repeated until the downstream variances settle)."""
    model = build_model(cfg, SHAPE, 4)
    model.load_state_dict(state)
    points = repair_points(model, model_spec(cfg))
    for _ in range(len(points)):
        for (writer, norm, _), out in zip(points, capture_outputs(model, [w for w, _, _ in points], x)):
            norm.running_var.copy_(units_first(out, channel_axis(writer)).var(1, unbiased=False))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_predicted_variance_is_the_variance_of_the_mix_of_aligned_units():
    """|sum_i l_i T_i(s_i z_i)|^2 is exactly the variance, on the probe's inputs, of the lambda-mix
    of the aligned base units (each base measured in its own network), for every norm: after a
    group's only writer and after each writer of a residual stream."""
    splits = toy_splits(SHAPE, n=64)
    x = splits.train.x
    spec = model_spec(CNN_BN)
    states = [with_measured_variances(CNN_BN, s, x) for s in random_states(CNN_BN, 2, SHAPE)]
    _, _, planted = noisy_permuted_copies(CNN_BN, states[0], 2, 0.0, SHAPE)
    couplings, lambdas = [planted[0], planted[1]], [0.3, 0.7]  # model 1 through a random permutation
    acts, writer_acts = activation_probe(CNN_BN, splits)(states, 64, shared_norm_writers(spec, states[0]))
    fused = fuse_with_couplings(spec, states, lambdas, couplings)
    predicted = with_norm_stats(fused, spec, states, lambdas, acts, writer_acts, settings("wb")).state
    averaged = fuse_with_couplings(spec, states, lambdas, couplings).state
    streams = 0
    for group in spec.groups:
        streams += len(spec.units[group]) > 1
        for unit in spec.units[group]:
            mix = 0.0
            for state, coupling, lam in zip(states, couplings, lambdas):
                model = build_model(CNN_BN, SHAPE, 4)
                model.load_state_dict(state)
                writer = model.get_submodule(unit.writer)
                h = units_first(capture_outputs(model, [writer], x)[0], channel_axis(writer)).double()
                mix = mix + lam * h[permutation_index(coupling[group])]
            truth = mix.var(1, unbiased=False)
            key = f"{unit.norm}.running_var"
            assert torch.allclose(predicted[key].double(), truth, rtol=1e-4, atol=1e-6), unit.writer
            assert not torch.allclose(averaged[key].double(), truth, rtol=1e-2), "the average must be off for this test to mean anything"
    assert streams >= 2 and len(spec.groups) - streams >= 3


def test_fusing_a_bn_net_with_permuted_copies_of_itself_keeps_its_variances_and_function():
    splits = toy_splits(SHAPE)
    state = random_states(CNN_BN, 1, SHAPE)[0]
    spec, copies, _ = noisy_permuted_copies(CNN_BN, state, 3, 0.0, SHAPE)
    ctx = FusionContext(activations=activation_probe(CNN_BN, splits))
    result = fuse("wb", spec, copies, [0.2, 0.3, 0.5], spec.group_sizes(state), settings("wb", cost="activation"), ctx)
    for key, value in state.items():
        if key.endswith("running_var"):
            assert torch.allclose(result.state[key], value, rtol=1e-5), key
    x = torch.randn(8, *SHAPE)
    assert torch.allclose(outputs(CNN_BN, result.state, x, SHAPE), outputs(CNN_BN, state, x, SHAPE), atol=1e-4)


def test_norm_stats_average_and_the_weight_cost_keep_the_averaged_variances():
    splits = toy_splits(SHAPE)
    states = random_states(CNN_BN, 2, SHAPE)
    spec = model_spec(CNN_BN)
    ctx = FusionContext(activations=activation_probe(CNN_BN, splits))
    sizes = spec.group_sizes(states[0])
    keys = [k for k in states[0] if k.endswith("running_var")]
    predicted = fuse("wb", spec, states, [0.5, 0.5], sizes, settings("wb", cost="activation"), ctx)
    averaged = fuse("wb", spec, states, [0.5, 0.5], sizes, settings("wb", cost="activation", norm_stats="average"), ctx)
    plain = fuse_with_couplings(spec, states, [0.5, 0.5], averaged.couplings).state
    assert all(torch.equal(averaged.state[k], plain[k]) for k in keys)
    assert all(same(predicted.couplings[0][g], averaged.couplings[0][g]) for g in spec.groups)
    assert any(not torch.allclose(predicted.state[k], plain[k]) for k in keys)
    weight = fuse("wb", spec, states, [0.5, 0.5], sizes, settings("wb", cost="weight"), ctx)
    assert all(torch.equal(weight.state[k], fuse_with_couplings(spec, states, [0.5, 0.5], weight.couplings).state[k]) for k in keys)
