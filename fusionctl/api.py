"""Fuse your own networks from Python: K in-memory modules of one architecture in, one module out.

    import fusionctl
    spec = fusionctl.derive_spec(model, example_inputs)      # what can be aligned; print(spec.coverage)
    fused = fusionctl.fuse_models([model_a, model_b], method="wb", example_inputs=x, data=loader)

`data` is any iterable of input batches or (inputs, labels) batches (a DataLoader): its inputs feed
activation costs, BatchNorm reset and REPAIR; with labels, solver.cost=auto compares its two
candidate alignments on them (without labels it aligns on weights). Methods and their settings
are the command line's (`wb`, `gwb`, `ot`, `wm`, `am`, `avg`; e.g. sweeps=0, cost="weight").
Every spec, traced or given, is first checked to keep the model's function under a random
permutation of every group (fusion/spec_check.py); one that does not stops with one line.
"""

from __future__ import annotations

import copy
import itertools
from typing import Iterable

import torch
from torch import nn

from fusionctl.config import solver_settings
from fusionctl.data import Split
from fusionctl.errors import FusionctlError
from fusionctl.eval.metrics import label_scores, logits_of
from fusionctl.fusion import FusionContext, fuse
from fusionctl.fusion.engine import HeldOut
from fusionctl.fusion.post import POST_STEPS, READS_REFERENCES, REPAIR_SAMPLES, aligned_references, repair_gaps, scoring_step
from fusionctl.fusion.spec_check import verify_spec, verify_traced
from fusionctl.fusion.units import repairable, stream_unit_features
from fusionctl.jobs.bases import fusion_weights
from fusionctl.models import check_spec_fits, load_state
from fusionctl.models.experts import propose_experts
from fusionctl.models.spec import AlignmentSpec
from fusionctl.models.trace import TraceError
from fusionctl.models.trace import derive_spec as _derive_spec

PROBE_BATCHES = 8  # batches of `data` read for activation features, BN reset, REPAIR and scoring


def derive_spec(model: nn.Module, example_inputs, check: bool = True) -> AlignmentSpec:
    """The alignment spec traced from `model` on `example_inputs` (see models/trace.py); its
    `coverage` says how many hidden units can be aligned and what was frozen. check: permute every
    group at random and make sure the outputs stay the same (fusion/spec_check.py; a float64 copy
    of the model runs three times on two examples), raising FusionctlError if they do not."""
    try:
        spec = _derive_spec(model, example_inputs)
    except TraceError as exc:
        raise FusionctlError(str(exc)) from exc
    if check:  # the experts of a mixture move only where the check confirms it
        spec = verify_traced(spec, model, example_inputs, type(model).__name__)
    return spec


def fuse_models(models: list[nn.Module], method: str = "wb", example_inputs=None, data: Iterable | None = None,
                weights: list[float] | None = None, post: tuple[str, ...] = (), return_couplings: bool = False,
                spec: AlignmentSpec | None = None, check: bool = True, target: nn.Module | None = None, **settings):
    """Fuse K modules of one architecture into one; returns the fused module (and the couplings,
    per model {group: (target, source)}, with return_couplings=True: a fusionctl.Permutation
    for an exact coupling between equal widths, `.index` the source unit of each target unit and
    `.dense()` its matrix; zipit's a fusionctl.Merge, `.cluster` the fused unit of each unit; otherwise a tensor).

    example_inputs: a batch the models accept (default: the first batch of `data`), for tracing.
    weights: lambda per model (default uniform). post: "bn_reset" and/or "repair", in order.
    spec: an AlignmentSpec written by hand (for a model torch.fx cannot trace) instead of the traced one.
    check: permute every group of the spec (traced or given) at random first and require the same outputs.
    target: an instance of the same class at the widths to fuse into (e.g. MyNet(width=2 * w)); the fused
    module is a copy of it, and its initial weights are where solver.init=random|distill start (auto's
    choice for other widths). Default: model 0's widths. The models may have other widths than each
    other, too. wb, gwb and ot fuse any widths, zipit any up to the models' sum; wm, c2m3, am and avg permute and need equal ones.
    settings: the method's settings (`fusionctl fuse solver=<method> solver.<key>=...`).
    """
    models = list(models)
    post = (post,) if isinstance(post, str) else tuple(post)  # post="repair" is one step, not six letters
    if len(models) < 2:
        raise FusionctlError(f"fuse_models needs at least two models, got {len(models)}")
    for i, m in enumerate(models[1:], start=1):
        if type(m) is not type(models[0]):
            raise FusionctlError(f"model {i} ({type(m).__name__}) is not the architecture of model 0 ({type(models[0]).__name__}): "
                                 "fuse models of one class")
    batches = list(itertools.islice(iter(data), PROBE_BATCHES)) if data is not None else []
    check_batches(batches, "data")
    inputs = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    example = example_inputs if example_inputs is not None else inputs[0] if inputs else None
    if spec is not None:
        check_spec_fits(spec, models[0], "the spec", type(models[0]).__name__, states[0])
        if check and example is not None:
            verify_spec(spec, models[0], example, type(models[0]).__name__, written="the spec")
    elif example is None:
        raise FusionctlError("fuse_models needs example_inputs (a batch the models accept) or data")
    else:
        spec = derive_spec(models[0], example, check)
    for i, m in enumerate(models[1:], start=1):
        if states[i].keys() != states[0].keys() or any(states[i][k].shape != v.shape for k, v in states[0].items()):
            _check_widths_of(m, f"model {i}", models[0], spec, example)
    target = models[0] if target is None else _check_widths_of(target, "target", models[0], spec, example)
    lambdas = fusion_weights(weights, len(models))
    for step in post:
        if step not in POST_STEPS:
            raise FusionctlError(f"unknown post-step '{step}'; choose from: {', '.join(POST_STEPS)}")
        if not inputs:
            raise FusionctlError(f"post-step {step} needs data")
        if step == "repair":  # before anything is fused
            repair_gaps(spec, states[0], 'post-step "repair"')
    sizes = spec.group_sizes(target.state_dict())
    shaped = {tuple(spec.group_sizes(m.state_dict()).items()): m for m in [*models, target]}

    def module(state):  # a base, or a state of the target's widths (init=distill probes its start)
        return holding(shaped[tuple(spec.group_sizes(state).items())], state)

    scored_after = scoring_step(states[0], repairable(spec, states[0]))
    ctx = FusionContext(
        random_target=lambda: {k: v.detach().clone() for k, v in target.state_dict().items()},  # init=random|distill start there
        activations=(lambda sts, n, writers=(): stream_unit_features([module(s) for s in sts], spec, _first(inputs, n), writers))
        if inputs else None,
        score=_scorer(module, spec, states, lambdas, batches, scored_after),
        score_after=scored_after,
    )
    result = fuse(method, spec, states, lambdas, sizes, solver_settings(method, settings), ctx)
    fused = holding(target, result.state)
    references = _references(module, spec, states, inputs) if READS_REFERENCES.intersection(post) else None
    for step in post:
        _apply(step, fused, spec, references, result, lambdas, inputs)
    return (fused, result.couplings) if return_couplings else fused


def check_batches(batches: list, name: str) -> None:
    """One line for batches the models cannot take: a dict (a Hugging Face collator's) is not unpacked."""
    for b in batches[:1]:
        if isinstance(b, dict):
            raise FusionctlError(f"{name}'s batches are dicts (keys {', '.join(map(str, b))}); give tensors or (inputs, labels) "
                                 "tuples with a label per output: a causal language model's (ids[:, :-1], ids[:, 1:])")


def _check_widths_of(other: nn.Module, name: str, model: nn.Module, spec: AlignmentSpec, example_inputs) -> nn.Module:
    """`other` (the target, or model i) if it is `model`'s architecture at other widths: the same class,
    the same entries differing only in aligned widths, and a spec of the same layout (nothing in it
    depends on a width)."""
    if type(other) is not type(model):
        raise FusionctlError(f"{name} is a {type(other).__name__}, the models are {type(model).__name__}s; give an instance of their class at the widths to fuse into")
    state = other.state_dict()
    try:
        spec.check_widths_only(model.state_dict(), state)
        spec.group_sizes(state)
        if spec.coverage is None:  # written by hand: it must fit this model as it fits model 0
            spec.check_fits(other, state)
        elif example_inputs is None or _layout_of(other, example_inputs, spec) != spec.layout():
            raise FusionctlError(f"{name}'s traced alignment differs from model 0's beyond their widths (a group's layout depends "
                                 f"on a width); give a {name} whose widths change no layout, or fuse at model 0's widths")
    except (TraceError, ValueError) as exc:
        raise FusionctlError(f"{name} does not fit model 0's alignment spec: {str(exc).splitlines()[0]}; "
                             "give an instance of their class at other widths") from exc
    return other


def _layout_of(other: nn.Module, example_inputs, spec: AlignmentSpec) -> tuple:
    """The layout of `other`'s traced spec, with its experts as groups where `spec` has them (confirmed on model 0)."""
    traced = _derive_spec(other, example_inputs)
    return ((propose_experts(traced, other) if getattr(spec.coverage, "experts", 0) else None) or traced).layout()


def holding(template: nn.Module, state: dict) -> nn.Module:
    """A copy of `template` holding `state`, in eval mode."""
    m = copy.deepcopy(template)
    load_state(m, state)
    return m.eval()


def _first(inputs: list[torch.Tensor], n: int):
    taken = 0
    for x in inputs:
        if taken >= n:
            return
        yield x[: n - taken]
        taken += len(x)


def _references(module, spec, states, inputs):
    """couplings -> the aligned bases for REPAIR on `inputs` (measured statistics or transported states);
    module(state): the module holding a state."""
    return aligned_references(module, states, spec, torch.cat(inputs)[:REPAIR_SAMPLES])


def _apply(step: str, model: nn.Module, spec, references, result, lambdas, inputs) -> None:
    """`step` on `model` in place; references: couplings -> the aligned bases (`_references`), read by REPAIR only
    for the FusionResult `result` (its couplings, and its transported bases when it kept them)."""
    x = torch.cat(inputs)
    refs = [holding(model, r) if isinstance(r, dict) else r for r in references(result.couplings, result.aligned)] if step in READS_REFERENCES else []
    POST_STEPS[step](model, spec, refs, lambdas, Split(x, torch.zeros(len(x), dtype=torch.long)))


def _scorer(module, spec, states, lambdas, batches, step):
    """Per-label loss and accuracy (HeldOut) on the labelled batches after `step` (BN reset / REPAIR / None: fusion.post.scoring_step; a
    module cannot gain biases, so REPAIR needs a bias or norm), for solver.cost=auto; None without labels.
    module(state): the module holding a state (a base's or the target's widths)."""
    labelled = [b for b in batches if isinstance(b, (tuple, list)) and len(b) > 1]
    if not labelled:
        return None
    inputs = [b[0] for b in labelled]
    references = _references(module, spec, states, inputs) if step in READS_REFERENCES else None

    def score(result) -> float:
        model = module(result.state)
        if step:
            _apply(step, model, spec, references, result, lambdas, inputs)
        with torch.no_grad():
            scores = [label_scores(logits_of(model(x)), y) for x, y, *_ in labelled]
        return HeldOut(torch.cat([s[0] for s in scores]), torch.cat([s[1] for s in scores]))

    return score


__all__ = ["derive_spec", "fuse_models"]
