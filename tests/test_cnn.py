import pytest
import torch

from fusionctl.config import ModelConfig
from fusionctl.fusion import METHODS, fuse
from fusionctl.fusion.transport import random_couplings, transport
from fusionctl.models import REGISTRY, build_model, group_sizes, model_spec
from tests.helpers import settings

SHAPE = (3, 16, 16)
X = torch.randn(8, *SHAPE)
# every CNN of the registry with a hand-written spec, at its tiny widths
CASES = {name: e.tiny["widths"] for name, e in REGISTRY.items() if e.inputs == "image" and e.spec is not None}


def cfg(name, bias, bn, widths=None):
    return ModelConfig(name, list(widths or CASES[name]), bias, bn)


def trained_like(c, seed=0):
    """A model with non-trivial BatchNorm statistics (one pass in train mode), in eval mode."""
    torch.manual_seed(seed)
    m = build_model(c, SHAPE, 5)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.3)
        m.train()
        m(torch.randn(32, *SHAPE) * 2 + 0.5)
    return m.eval()


def state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def out(c, st):
    m = build_model(c, SHAPE, 5)
    m.load_state_dict(st)
    with torch.no_grad():
        return m.eval()(X)


def planted(spec, st, seed=1):
    g = torch.Generator().manual_seed(seed)
    cps = random_couplings(spec, st, g)
    return transport(st, spec, cps)


ALL = [(n, b, bn) for n in CASES for b in (False, True) for bn in (False, True)]


@pytest.mark.parametrize("name, bias, bn", ALL)
def test_spec_covers_the_state_and_matches_declared_sizes(name, bias, bn):
    c = cfg(name, bias, bn)
    st = state(trained_like(c))
    spec = model_spec(c)
    spec.check_covers(st)
    assert spec.group_sizes(st) == group_sizes(c)


@pytest.mark.parametrize("name, bias, bn", ALL)
def test_transport_by_exact_couplings_preserves_cnn_outputs(name, bias, bn):
    c = cfg(name, bias, bn)
    st = state(trained_like(c))
    spec = model_spec(c)
    permuted = planted(spec, st)
    first_conv = next(k for k in st if k.endswith("weight") and st[k].dim() == 4)
    assert not torch.equal(permuted[first_conv], st[first_conv])
    assert torch.allclose(out(c, permuted), out(c, st), atol=1e-4)


def test_breaking_a_residual_group_breaks_the_function():
    # The stream's convs must share one coupling: permuting the shortcut alone is wrong.
    c = cfg("resnet20", True, True)
    st = state(trained_like(c))
    spec = model_spec(c)
    good = planted(spec, st)
    bad = dict(good)
    key = next(k for k in st if "shortcut.weight" in k)
    bad[key] = st[key]
    assert not torch.allclose(out(c, bad), out(c, st), atol=1e-3)


@pytest.mark.parametrize("name, bias, bn", [(n, True, bn) for n in CASES for bn in (False, True)])
@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("avg", "am", "zipit")])  # am, zipit: test_matching.py, test_zipit.py
def test_fusing_a_cnn_with_its_permuted_copy_returns_its_function(name, bias, bn, method):
    c = cfg(name, bias, bn)
    st = state(trained_like(c))
    spec = model_spec(c)
    permuted = planted(spec, st, seed=4)
    res = fuse(method, spec, [st, permuted], [0.5, 0.5], group_sizes(c), settings(name=method), None)
    assert torch.allclose(out(c, res.state), out(c, st), atol=1e-4)


def test_cnn_runs_on_grey_28x28_images():
    for name in CASES:
        m = build_model(cfg(name, False, True), (1, 28, 28), 10)
        assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
