"""Text classification (AG News format) and recurrent models over token embeddings."""

import csv
import sys
import types

import pytest
import torch

from fusionctl.config import ModelConfig
from fusionctl.data import load_dataset
from fusionctl.data.text import PAD, UNK, build_vocab, encode, tokenize
from fusionctl.errors import FusionctlError
from fusionctl.eval.grid import evaluate_points, flatten, float_keys
from fusionctl.fusion import fuse
from fusionctl.fusion.transport import random_couplings, transport
from fusionctl.fusion.units import group_outputs, writer_outputs
from fusionctl.models import build_model, config_for, group_sizes, model_spec
from tests.helpers import settings

TOPICS = {1: "world election minister", 2: "sports match goal", 3: "business stocks market", 4: "science software chip"}


def write_ag_news(folder, per_class=6, test_extra=""):
    """Tiny files in AG News's own CSV format: every field quoted, class 1-4, title, description."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.csv", per_class), ("test.csv", 2)):
        with open(folder / name, "w", newline="") as f:
            w = csv.writer(f, quoting=csv.QUOTE_ALL)
            for c, words in TOPICS.items():
                for i in range(n):
                    w.writerow([c, f"Title {i}, about {words.split()[0]}", f"The {words} news\\story #{i} {test_extra if name == 'test.csv' else ''}"])


def test_tokens_vocabulary_and_left_padding():
    assert tokenize("Wall St. Bears Claw Back\\Into the Black (Reuters)") == ["wall", "st", "bears", "claw", "back", "into", "the", "black", "reuters"]
    texts = [["b", "a", "b", "c"], ["a", "b", "rare"], ["c", "b"]]
    vocab = build_vocab(texts, size=10)
    assert vocab == {"b": 2, "a": 3, "c": 4}, "most frequent first, ties alphabetical, singletons out"
    assert build_vocab(texts, size=4) == {"b": 2, "a": 3}
    ids = encode([["a", "b", "rare"], ["c", "b", "a", "b", "c"]], vocab, max_len=4)
    assert ids.tolist() == [[PAD, 3, 2, UNK], [4, 2, 3, 2]], "left-padded, cut after max_len tokens"


def test_ag_news_csv_loads_with_a_vocabulary_from_the_training_split(tmp_path):
    write_ag_news(tmp_path / "ag_news", test_extra="zebra zebra")
    splits = load_dataset("ag_news", tmp_path, val_fraction=0.25, download=False, max_len=16)
    assert splits.train.x.dtype == torch.int64 and splits.input_shape == (16,)
    assert len(splits.train) + len(splits.val) == 24 and len(splits.test) == 8
    assert sorted(set(splits.test.y.tolist())) == [0, 1, 2, 3]
    assert splits.num_classes == 4 and splits.vocab > int(splits.train.x.max())
    # "zebra" occurs in the test split only: it is unknown, not a new word
    assert (splits.test.x == UNK).sum(1).min() >= 2


def test_ag_news_missing_or_malformed_files_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # the download library is absent
    with pytest.raises(FusionctlError, match="ag_news/train.csv"):
        load_dataset("ag_news", tmp_path, download=True)
    write_ag_news(tmp_path / "ag_news")
    (tmp_path / "ag_news" / "test.csv").write_text('"7","t","d"\n')
    with pytest.raises(FusionctlError, match="line 1: expected 'class \\(1-4\\)'"):
        load_dataset("ag_news", tmp_path, download=False)


def test_ag_news_download_through_hugging_face_datasets_is_kept_as_csv(tmp_path, monkeypatch):
    calls = []

    def load(name, cache_dir=None):
        calls.append(name)
        rows = lambda n: {"text": [f"{TOPICS[c + 1]} item {i}" for c in range(4) for i in range(n)], "label": [c for c in range(4) for _ in range(n)]}  # noqa: E731
        return {"train": rows(5), "test": rows(2)}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))
    splits = load_dataset("ag_news", tmp_path, val_fraction=0.0)
    assert calls == ["fancyzhx/ag_news"] and len(splits.train) == 20 and len(splits.test) == 8
    assert sorted(splits.train.y.tolist()) == sorted([c for c in range(4) for _ in range(5)])
    again = load_dataset("ag_news", tmp_path, val_fraction=0.0, download=False)  # offline from the written CSV
    assert calls == ["fancyzhx/ag_news"] and torch.equal(again.train.x, splits.train.x)


VOCAB, STEPS = 30, 6
TOKENS = torch.randint(0, VOCAB, (16, STEPS), generator=torch.Generator().manual_seed(0))


def text_model(kind, seed=0, embed=5, widths=(7,)):
    torch.manual_seed(seed)
    cfg = ModelConfig(kind, list(widths), True, embed=embed)
    return cfg, build_model(cfg, (STEPS,), 4, VOCAB).eval()


def outputs(cfg, st):
    m = build_model(config_for(cfg, st), (STEPS,), 4, VOCAB)
    m.load_state_dict(st)
    with torch.no_grad():
        return m.eval()(TOKENS)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_embedding_units_are_aligned_and_transport_preserves_the_function(kind):
    cfg, m = text_model(kind)
    st = {k: v.detach().clone() for k, v in m.state_dict().items()}
    spec = model_spec(cfg)
    assert spec.groups == ("emb", "h1") and group_sizes(cfg) == {"emb": 5, "h1": 7}
    g = torch.Generator().manual_seed(1)
    cps = random_couplings(spec, st, g)
    permuted = transport(st, spec, cps)
    assert not torch.allclose(permuted["embed.weight"], st["embed.weight"])
    assert torch.allclose(outputs(cfg, permuted), outputs(cfg, st), atol=1e-5)
    # permuting the embedding units alone, without the input weights reading them, breaks it
    wrong = dict(st, **{"embed.weight": permuted["embed.weight"]})
    assert not torch.allclose(outputs(cfg, wrong), outputs(cfg, st), atol=1e-3)


@pytest.mark.parametrize("method", ["gwb", "wb", "wm"])
def test_fusing_a_text_model_with_its_permuted_copy_returns_it(method):
    cfg, m = text_model("lstm")
    st = {k: v.detach().clone() for k, v in m.state_dict().items()}
    spec = model_spec(cfg)
    g = torch.Generator().manual_seed(4)
    cps = random_couplings(spec, st, g)
    res = fuse(method, spec, [st, transport(st, spec, cps)], [0.5, 0.5], spec.group_sizes(st), settings(name=method), None)
    assert torch.allclose(outputs(cfg, res.state), outputs(cfg, st), atol=1e-5)


def test_text_models_give_embedding_activations_and_evaluate_under_vmap():
    from fusionctl.data import Split

    cfg, m = text_model("gru")
    spec = model_spec(cfg)
    acts = group_outputs(spec, writer_outputs(m, spec, TOKENS))
    assert acts["emb"].shape == (5, 16 * STEPS) and acts["h1"].shape == (7, 16 * STEPS)
    st = m.state_dict()
    keys = float_keys(st)
    origin = flatten(st, keys)
    _, other = text_model("gru", seed=1)
    direction = (flatten(other.state_dict(), keys) - origin)[None]
    split = Split(TOKENS, torch.randint(0, 4, (16,)))
    res = evaluate_points(m, st, origin, direction, torch.tensor([[0.0], [1.0]]), {"s": split}, chunk=2)
    with torch.no_grad():
        end = torch.nn.functional.cross_entropy(other(TOKENS), split.y)
    assert float(res["s"]["loss"][1]) == pytest.approx(float(end), rel=1e-5)


@pytest.mark.parametrize("name, embed, vocab, message", [
    ("mlp", 0, VOCAB, "model=rnn, lstm or gru"),
    ("lstm", 0, VOCAB, "set model.embed"),
    ("lstm", 8, 0, "set model.embed=0 or use a text dataset"),
])
def test_text_and_model_mismatches_are_named(name, embed, vocab, message):
    with pytest.raises(FusionctlError, match=message):
        build_model(ModelConfig(name, [7], False, embed=embed), (STEPS,), 4, vocab)
