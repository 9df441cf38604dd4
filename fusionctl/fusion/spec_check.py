"""An alignment spec's self-check: permuting every group at random must keep the model's function.

The tracer freezes what it cannot vouch for, and a hand-written spec is the user's word; this
checks both on the example inputs, the way the tests check every traced net. It runs a float64
copy (in the model's own precision where an op has no float64) whose parameters and buffers are
each scaled by a random factor near 1 and shifted (unless all positive), so that a BatchNorm's
fresh statistics or a zero-initialised bias cannot hide a wrong permutation, and it moves every
group. Round-off is measured on the same copy, with noise of 50 round-off units on its entries at
the lowest precision the model computes in (Hugging Face's attention takes its softmax in float32
whatever the input): a chaotic net at random init moves by 1e-9 and more from round-off alone. A
change counts as wrong above 1e-9 relative and 100 times that round-off.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from fusionctl.errors import FusionctlError
from fusionctl.fusion.transport import random_couplings, transport
from fusionctl.models import load_state
from fusionctl.models.experts import propose_experts
from fusionctl.models.outputs import tensors_in
from fusionctl.models.spec import AlignmentSpec

TOLERANCE = 1e-9  # relative output change that counts as a wrong permutation ...
ROUNDOFF_FACTOR = 100  # ... when also this many times the change round-off alone makes
SAMPLES = 2  # examples the check runs on
MAX_ENTRIES = 100_000_000  # larger models are not checked: their float64 copy would take over 800 MB

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PermutationCheck:
    change: float  # relative output change under a random permutation of every group
    roundoff: float  # relative output change under noise of 50 round-off units on every entry
    precision: str = "float64"  # the lowest precision the model computes in, which sets that round-off
    skipped: str = ""  # why the check could not run (then change and roundoff mean nothing)

    @property
    def wrong(self) -> bool:
        return not self.skipped and self.change > TOLERANCE and self.change > ROUNDOFF_FACTOR * self.roundoff

    def __str__(self) -> str:
        if self.skipped:
            return f"not checked: {self.skipped}"
        return f"a random permutation of every group moves the outputs by {self.change:.1e} relative ({self.precision}; round-off {self.roundoff:.1e})"


def unchecked(reason: str) -> PermutationCheck:
    return PermutationCheck(float("nan"), float("nan"), "", reason)


def check_permutation(model: nn.Module, spec: AlignmentSpec, inputs, seed: int = 0) -> PermutationCheck:
    """How far a random permutation of every group of `spec` moves `model`'s outputs on (the first
    SAMPLES of) `inputs`, in float64 where the model runs in it. Skipped (with the reason) where it
    does not run on them, its outputs are not finite or not the same twice in a row (random in eval
    mode), or it has over MAX_ENTRIES parameters and buffers. The caller's random state is kept."""
    if sum(t.numel() for t in model.state_dict().values()) > MAX_ENTRIES:
        return unchecked(f"over {MAX_ENTRIES // 1_000_000}M parameter and buffer entries")
    given = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    error = None
    with torch.random.fork_rng(devices=[]):
        for double in (True, False):  # in its own precision where an op has no float64 kernel
            try:
                outs, lowest = _outputs(model, spec, _first(given, double), double, seed)
                break
            except Exception as exc:  # noqa: BLE001 - no float64 (MPS), a model that refuses the inputs: unchecked, not failed
                outs, error = None, exc
    if outs is None:
        return unchecked(f"the model did not run on the example inputs ({type(error).__name__}: {str(error).strip()[:120]})")
    if not all(torch.isfinite(o).all() for o in outs) or not outs[0].numel():
        return unchecked("the outputs on the example inputs are empty or not finite")
    scale = float(outs[0].norm()) or 1.0
    change, noise, again = (float((o - outs[0]).norm()) / scale for o in outs[1:])
    # a nondeterministic kernel (atomic adds on a GPU) differs by round-off, a random forward by far more
    if again > TOLERANCE and again > ROUNDOFF_FACTOR * 50 * torch.finfo(lowest).eps:
        return unchecked(f"two runs on the same inputs differ by {again:.1e} relative (the forward is random in eval mode)")
    return PermutationCheck(change, max(noise, again), str(lowest).replace("torch.", ""))


def _outputs(model: nn.Module, spec: AlignmentSpec, inputs: tuple, double: bool, seed: int):
    """The outputs of a jittered copy, of it permuted, of it with round-off noise and of the copy
    again (a forward that is random in eval mode differs); the lowest precision it computed in."""
    g = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(model).eval()
    m = m.double() if double else m
    state = {k: _jitter(v, g, 0.2) for k, v in m.state_dict().items()}
    couplings = _moving_couplings(spec, state, g)
    with _CheckMode() as seen:
        base = _run(m, state, inputs)
        # round-off at the lowest precision the model computes in (a float32 softmax inside a float64 model)
        lowest = max(seen.dtypes | {torch.float64}, key=lambda d: torch.finfo(d).eps)
        eps = torch.finfo(lowest).eps
        # one altered copy at a time: each is the model's size in float64 (0.7 GB for a ViT-B/16)
        noisy = _run(m, {k: _jitter(v, g, 50 * eps) for k, v in state.items()}, inputs)
        permuted = _run(m, transport(state, spec, couplings), inputs)
        return [base, permuted, noisy, _run(m, state, inputs)], lowest


def _moving_couplings(spec: AlignmentSpec, state: dict, g: torch.Generator) -> dict:
    """random_couplings, each group's drawn again while it is the identity (two heads that move only
    whole stay in place half the time, which would let a slip pass unseen)."""
    couplings = random_couplings(spec, state, g)
    for group, p in couplings.items():
        for _ in range(20):
            if not p.identity:
                break
            p = random_couplings(spec, state, g)[group]
        couplings[group] = p
    return couplings


# torch's per-expert matmul; an older torch (2.4) has none, nor the models that call it
_GROUPED_MM = getattr(getattr(torch.ops.aten, "_grouped_mm", None), "default", None)


class _CheckMode(TorchDispatchMode):
    """The floating dtypes of every tensor the ops compute while active; a grouped matmul of float64
    tokens sorted by expert with stacked expert weights (no float64 kernel) computed by its definition."""

    def __init__(self):
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        offs = args[2] if len(args) > 2 else kwargs.get("offs")
        if func is _GROUPED_MM and args[0].dtype == torch.float64 and args[0].dim() == 2 \
                and args[1].dim() == 3 and offs is not None and len(args) <= 3 and set(kwargs) <= {"offs"}:
            out = args[0].new_zeros(args[0].shape[0], args[1].shape[-1])
            for expert, (start, end) in enumerate(zip([0, *offs.tolist()], offs.tolist())):
                out[start:end] = args[0][start:end] @ args[1][expert]
            self.dtypes.add(out.dtype)
            return out
        out = func(*args, **kwargs)
        self.dtypes.update(t.dtype for t in pytree.tree_leaves(out) if torch.is_tensor(t) and t.is_floating_point())
        return out


def _jitter(t: torch.Tensor, g: torch.Generator, size: float) -> torch.Tensor:
    """Each entry scaled by exp(size * N(0, 1)), and shifted by as much noise unless all are positive
    (variances stay positive; zeros, such as fresh BatchNorm means, do not stay zero)."""
    if not t.is_floating_point():
        return t
    noise = lambda: torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)  # noqa: E731
    out = t * torch.exp(size * noise())
    if t.numel() and not bool((t > 0).all()):
        finite = t[torch.isfinite(t)]
        out = out + size * (float(finite.abs().mean()) if finite.numel() and finite.abs().sum() else 1.0) * noise()
    return out


def _first(inputs: tuple, double: bool = True) -> tuple:
    """The first SAMPLES examples (where every tensor input shares a batch axis), floating ones in float64 if `double`."""
    cut = len({x.shape[0] for x in inputs if torch.is_tensor(x) and x.dim()}) == 1
    out = []
    for x in inputs:
        if torch.is_tensor(x):
            x = x[:SAMPLES] if cut and x.dim() else x
            x = x.double() if double and x.is_floating_point() else x
        out.append(x)
    return tuple(out)


def _run(model: nn.Module, state: dict, inputs: tuple) -> torch.Tensor:
    load_state(model, state)
    with torch.no_grad():
        return _flat(model(*inputs))


def _flat(out) -> torch.Tensor:
    """Every floating tensor of an output (a tensor, or a tuple, list, dict or dataclass of them) as one vector."""
    parts = [t.detach().reshape(-1).double() for t in tensors_in(out) if t.is_floating_point()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def verify_spec(spec: AlignmentSpec, model: nn.Module, inputs, subject: str, written: str | None = None,
                check: PermutationCheck | None = None) -> PermutationCheck:
    """check_permutation (or `check`, already run on this spec), logged and noted in a traced spec's
    coverage; one clear line (FusionctlError) when the spec does not keep the function. written: how
    a hand-written spec was given."""
    check = check or check_permutation(model, spec, inputs)
    if check.wrong:
        if written:
            raise FusionctlError(f"{written} does not keep {subject}'s function ({check}); an axis it names is missing or "
                                 "indexed by the wrong group: compare it with the model's forward(); spec_check=false (check=False) "
                                 "skips this check")
        raise FusionctlError(f"the alignment spec traced from {subject} does not keep its function ({check}): a fusionctl "
                             "tracing bug; please report it with the model, and fuse with a spec written by hand meanwhile "
                             "(model.spec=..., or fuse_models(spec=...)); spec_check=false (check=False) skips this check")
    (log.warning if check.skipped else log.info)("%s: %s", subject, check)
    if spec.coverage is not None:
        spec.coverage.checked = str(check)
    return check


def with_experts(spec: AlignmentSpec, model: nn.Module, inputs, subject: str) -> tuple[AlignmentSpec, PermutationCheck | None]:
    """`spec` with the experts of its mixtures as groups (models/experts.py) where a random
    permutation of every group, those included, keeps the outputs, and that check; else `spec` as it
    was, and None."""
    proposed = propose_experts(spec, model)
    if proposed is None:
        return spec, None
    check = check_permutation(model, proposed, inputs)
    if check.skipped or check.wrong:
        log.info("%s: the experts stay in place; moving them %s", subject,
                 f"could not be checked ({check.skipped})" if check.skipped else f"changed the outputs ({check})")
        return spec, None
    found = len(proposed.groups) - len(spec.groups)
    log.info("%s: the experts of %d mixture%s move as a group each (a random permutation of them keeps the outputs)", subject,
             found, "s" * (found != 1))
    return proposed, check


def verify_traced(spec: AlignmentSpec, model: nn.Module, inputs, subject: str) -> AlignmentSpec:
    """verify_spec for a traced spec, its mixtures' experts moved where the check confirms them
    (with_experts); the spec it verified. The confirming check is not run a second time."""
    spec, check = with_experts(spec, model, inputs, subject)
    verify_spec(spec, model, inputs, subject, check=check)
    return spec
