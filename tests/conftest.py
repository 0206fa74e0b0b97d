"""Shared fixtures: a tiny random BERT saved as a local HF folder, fixture CSVs, a shrunk config.

Nothing here touches the network or the real MiniLM: the backbone is a `BertConfig` with a
small vocabulary built from the fixture words, so a full training run takes seconds. The helpers
they use (and the test modules import) live in tests/helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_binary, make_emotion, tiny_overrides, vocabulary

from mtl.config import load_config
from mtl.runtime import IGNORED_WARNINGS


def pytest_configure(config: pytest.Config) -> None:
    # the warnings the command lines ignore (mtl.runtime); tests call train() etc. without main()
    for message in IGNORED_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}")


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


@pytest.fixture
def tiny_cfg(tiny_backbone, data_dir, tmp_path):
    """Factory: `tiny_cfg("cv.n_splits=3", ...)` → a validated Box for a tiny run under tmp_path."""

    def make(*extra: str):
        return load_config(
            "configs/default.yaml", tiny_overrides(tiny_backbone, data_dir, tmp_path) + list(extra)
        )

    return make


@pytest.fixture(scope="session")
def blended_export(tiny_backbone, data_dir, tmp_path_factory) -> Path:
    """An int8 ONNX export of a tiny three-task run: 2 folds, the score-weighted blend, tuned
    emotion thresholds and a tuned toxicity (binary) threshold, tweet preprocessing (RUN/export/;
    the run folder is its parent)."""
    from helpers import REPO, tiny_overrides

    from mtl.config import load_config
    from mtl.inference.export import export_run
    from mtl.run.train import train

    out = tmp_path_factory.mktemp("export_run")
    cfg = load_config(
        REPO / "configs" / "default.yaml",
        tiny_overrides(tiny_backbone, data_dir, out)
        + [
            "cv.n_splits=2",
            "cv.blend=weighted",
            "tasks.emotion.threshold=tuned",
            "tasks.toxicity.threshold=tuned",
            "data.preprocess=tweet",
            "trainer.max_epochs=1",
        ],
    )
    train(cfg)
    # a one-epoch tiny random model sits near its cuts, so int8 may flip a few labels: this
    # fixture serves parity and serving tests; the agreement gate has its own (test_export_r2)
    return export_run(out / cfg.run.name, quantize="int8", force=True)
