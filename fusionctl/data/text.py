"""Text classification as token-id sequences for recurrent models.

AG News (4 topics, 120,000 training and 7,600 test articles) is read from the original CSV files
(`class,title,description`, classes 1-4; the format of the fast.ai / Kaggle mirrors and what
torchtext used) under <data_dir>/ag_news/, or fetched through Hugging Face `datasets`
(`pip install 'fusionctl[text]'`) and written there in that format, so later runs work offline.

Tokens are lower-cased words; the vocabulary is built from the training split only (most
frequent first, ties alphabetical, so it is the same on every machine). Id 0 pads, id 1 is
unknown. Sequences are cut to `max_len` tokens and padded on the left, so the last time step,
which the classifier's decoder reads, is always a real token.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from fusionctl.store import atomic_path

log = logging.getLogger(__name__)

PAD, UNK = 0, 1
AG_NEWS_FILES = ("train.csv", "test.csv")
AG_NEWS_HF = "fancyzhx/ag_news"  # the Hugging Face Hub copy (fields: text, label 0-3)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\\", " "))


def build_vocab(texts: list[list[str]], size: int, min_count: int = 2) -> dict[str, int]:
    """Word -> id for the `size - 2` most frequent words seen at least `min_count` times."""
    counts = Counter(w for t in texts for w in t)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return {w: i + 2 for i, w in enumerate(words[: max(0, size - 2)])}


def encode(texts: list[list[str]], vocab: dict[str, int], max_len: int) -> np.ndarray:
    """(N, max_len) int64 ids: the first max_len tokens, left-padded with PAD."""
    out = np.full((len(texts), max_len), PAD, dtype=np.int64)
    for row, words in enumerate(texts):
        ids = [vocab.get(w, UNK) for w in words[:max_len]]
        if ids:
            out[row, max_len - len(ids) :] = ids
    return out


def read_ag_news_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Texts ("title description") and 0-based labels from an AG News CSV file."""
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if len(row) != 3 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= 4:
                raise ValueError(f"{path} line {n}: expected 'class (1-4)','title','description', got {row[:3]}")
            labels.append(int(row[0]) - 1)
            texts.append(f"{row[1]} {row[2]}")
    if not texts:
        raise ValueError(f"{path} is empty")
    return texts, np.asarray(labels, dtype=np.int64)


def write_ag_news_csv(path: Path, texts: list[str], labels) -> None:
    """The original format; HF's `text` is already "title description", so the title stays empty."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        for text, label in zip(texts, labels):
            writer.writerow([int(label) + 1, "", text])


def _download_ag_news(folder: Path) -> bool:
    try:
        import datasets
    except ImportError:
        log.info("AG News download needs Hugging Face datasets: pip install 'fusionctl[text]'")
        return False
    try:
        ds = datasets.load_dataset(AG_NEWS_HF, cache_dir=str(folder / "hf-cache"))
        folder.mkdir(parents=True, exist_ok=True)
        for split, name in (("train", "train.csv"), ("test", "test.csv")):
            write_ag_news_csv(folder / name, list(ds[split]["text"]), list(ds[split]["label"]))
    except Exception as exc:  # network and hub errors come in many types
        log.info("download of AG News failed: %s", exc)
        return False
    return True


def ag_news(data_dir: Path, download: bool, vocab_size: int, max_len: int):
    """(x_train, y_train, x_test, y_test, classes, vocab size) or None when absent."""
    folder = data_dir / "ag_news"
    if not all((folder / f).is_file() for f in AG_NEWS_FILES):
        if not (download and _download_ag_news(folder)):
            return None
    train_texts, y_train = read_ag_news_csv(folder / "train.csv")
    test_texts, y_test = read_ag_news_csv(folder / "test.csv")
    train_tokens = [tokenize(t) for t in train_texts]
    vocab = build_vocab(train_tokens, vocab_size)
    x_train = encode(train_tokens, vocab, max_len)
    x_test = encode([tokenize(t) for t in test_texts], vocab, max_len)
    return x_train, y_train, x_test, y_test, 4, len(vocab) + 2
