"""Test helpers shared by the test modules: fixture CSV builders over a small vocabulary, the
overrides that shrink a config to the tiny run, and the train script in a subprocess. The fixtures
that use them live in tests/conftest.py.

    from helpers import make_topics, tiny_overrides, topic_task
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

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


def scalar_tags(folder: Path) -> set[str]:
    """Every TensorBoard scalar tag logged under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in folder.rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags
