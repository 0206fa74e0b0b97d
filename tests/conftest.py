"""Shared fixtures: a tiny random BERT saved as a local HF folder, fixture CSVs, a shrunk config.

Nothing here touches the network or the real MiniLM: the backbone is a `BertConfig` with a
small vocabulary built from the fixture words, so a full training run takes seconds.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from mtl.config import load_config
from mtl.runtime import IGNORED_WARNINGS


def pytest_configure(config: pytest.Config) -> None:
    # the warnings the command lines ignore (mtl.runtime); tests call train() etc. without main()
    for message in IGNORED_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}")


EMOTIONS = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
WORDS = {
    "toxic": ["idiot", "stupid", "hate", "shut", "loser", "trash"],
    "calm": ["thanks", "friend", "nice", "agree", "welcome", "kind"],
    "positive": ["great", "wonderful", "love", "superb", "fun", "best"],
    "negative": ["boring", "awful", "dull", "worst", "mess", "bad"],
    "filler": ["the", "a", "movie", "you", "this", "is", "really", "so", "and", "it", "was", "of"],
}
EMOTION_WORDS = {
    "anger": "furious",
    "disgust": "gross",
    "fear": "scared",
    "joy": "happy",
    "sadness": "sad",
    "surprise": "wow",
    "neutral": "okay",
}


def vocabulary() -> list[str]:
    words = sorted({w for ws in WORDS.values() for w in ws} | set(EMOTION_WORDS.values()))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    return (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + words
        + letters
        + ["##" + c for c in letters]
        + list(".,!?'")
    )


def sentence(rng: random.Random, key_words: list[str], n_filler: int) -> str:
    words = key_words + rng.choices(WORDS["filler"], k=n_filler)
    rng.shuffle(words)
    return " ".join(words)


def make_binary(n: int, pos: str, neg: str, seed: int, pos_rate: float = 0.4) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = int(rng.random() < pos_rate)
        key = rng.choices(WORDS[pos if label else neg], k=rng.randint(1, 2))
        rows.append({"text": sentence(rng, key, rng.randint(1, 12)), "label": label})
    return pd.DataFrame(rows)


TOPICS = ["calm", "positive", "toxic"]  # string classes, each with its own key words


def make_topics(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        key = rng.choices(WORDS[topic], k=rng.randint(1, 2))
        rows.append({"body": sentence(rng, key, rng.randint(1, 8)), "topic": topic})
    return pd.DataFrame(rows)


def topic_task(train: Path, val: Path | None = None) -> list[str]:
    """Overrides adding a multiclass `topic` task (string classes) read from make_topics files."""
    return [
        "tasks.topic.type=multiclass",
        f"tasks.topic.train={train}",
        *([f"tasks.topic.val={val}"] if val is not None else []),
        "tasks.topic.text_column=body",
        "tasks.topic.label_columns=[topic]",
    ]


def make_emotion(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        chosen = rng.sample(EMOTIONS, k=rng.choice([1, 1, 2]))
        row = {"text": sentence(rng, [EMOTION_WORDS[e] for e in chosen], rng.randint(1, 10))}
        row.update({e: int(e in chosen) for e in EMOTIONS})
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A random 2-layer BERT (hidden 32) and a WordPiece tokenizer over the fixture words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = vocabulary()
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Fixture CSVs in the shapes of the real tasks (train / val / test per task)."""
    folder = tmp_path_factory.mktemp("data")
    for split, n, seed in (("train", 120, 1), ("val", 40, 2), ("test", 30, 3)):
        make_binary(n, "toxic", "calm", seed).to_csv(folder / f"toxicity_{split}.csv", index=False)
        make_emotion(n, seed + 10).to_csv(folder / f"emotion_{split}.csv", index=False)
        make_binary(n, "positive", "negative", seed + 20, 0.5).to_csv(
            folder / f"sentiment_{split}.csv", index=False
        )
    return folder


def tiny_model_overrides(backbone: Path, data: Path) -> list[str]:
    """Overrides that put any config on the tiny BERT and the fixture CSVs, seconds-long on CPU."""
    return [
        f"backbone.name={backbone}",
        f"data_dir={data}",
        "backbone.dropout=0.0",
        "data.batch_size=16",
        "data.max_length=32",
        "trainer.max_epochs=2",
        "cv.n_splits=1",  # tests that want k-fold override this
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "optim.lr_backbone=1e-3",
        "optim.lr_heads=1e-2",
    ]


def tiny_overrides(backbone: Path, data: Path, out: Path) -> list[str]:
    """configs/default.yaml shrunk to the tiny run, writing under `out`, with the test files."""
    return tiny_model_overrides(backbone, data) + [
        f"run.output_dir={out}",
        "run.name=tiny",
        "tasks.toxicity.test=toxicity_test.csv",
        "tasks.emotion.test=emotion_test.csv",
        "tasks.sentiment.test=sentiment_test.csv",
    ]


@pytest.fixture
def tiny_cfg(tiny_backbone, data_dir, tmp_path):
    """Factory: `tiny_cfg("cv.n_splits=3", ...)` → a validated Box for a tiny run under tmp_path."""

    def make(*extra: str):
        return load_config(
            "configs/default.yaml", tiny_overrides(tiny_backbone, data_dir, tmp_path) + list(extra)
        )

    return make


REPO = Path(__file__).resolve().parent.parent


def run_train_script(argv: list[str], timeout: int = 300):
    """`python scripts/train.py ARGV` in a subprocess, offline (HF_HUB_OFFLINE proves nothing is fetched)."""
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "scripts/train.py", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        timeout=timeout,
    )
