"""Tiny random encoders of each family the tests cover, built offline: 2 layers, hidden 32, each
saved with a tokenizer of its own kind over the fixture words (WordPiece, byte-level BPE or
SentencePiece-style Unigram) and the family's own special-token ids and pad id.

    folder = make_backbone("deberta-v2", tmp_path)   # config.json, model.safetensors, tokenizer
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import EMOTION_WORDS, WORDS

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(".,!?'")


def _words() -> list[str]:
    return sorted({w for ws in WORDS.values() for w in ws} | set(EMOTION_WORDS.values()))


def _wordpiece(specials: list[str]) -> dict[str, int]:
    pieces = specials + _words() + LETTERS + ["##" + c for c in LETTERS]
    return {w: i for i, w in enumerate(pieces)}


def _unigram(specials: list[str], last: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    """SentencePiece-style pieces: '▁word' for each fixture word, then single characters."""
    pieces = [(s, 0.0) for s in specials] + [("▁" + w, -1.0) for w in _words()]
    return pieces + [("▁", -2.0)] + [(c, -3.0) for c in LETTERS] + [(s, 0.0) for s in last]


def _byte_bpe():
    """Byte-level BPE (RoBERTa's kind) trained on the fixture words, offline."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator([" ".join(_words())] * 3, vocab_size=300, special_tokens=specials)
    model = json.loads(bpe._tokenizer.to_str())["model"]  # the trained vocab and merges
    return RobertaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])


def tokenizer_of(family: str):
    import transformers as tf

    if family in ("bert", "distilbert", "electra"):
        return tf.BertTokenizer(vocab=_wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    if family == "mpnet":
        return tf.MPNetTokenizer(vocab=_wordpiece(["<s>", "<pad>", "</s>", "<unk>", "[UNK]"]))
    if family == "roberta":
        return _byte_bpe()
    if family == "xlm-roberta":
        return tf.XLMRobertaTokenizer(
            vocab=_unigram(["<s>", "<pad>", "</s>", "<unk>"], ("<mask>",))
        )
    if family == "albert":
        return tf.AlbertTokenizer(vocab=_unigram(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]))
    assert family == "deberta-v2"
    pieces = _unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"])
    return tf.DebertaV2Tokenizer(vocab=pieces, unk_id=3)


def config_of(family: str, vocab_size: int):
    """A tiny config of the family with its real special-token ids (RoBERTa-like: pad 1)."""
    from transformers import AutoConfig

    if family == "distilbert":
        return AutoConfig.for_model(
            family, vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
            max_position_embeddings=64, pad_token_id=0,
        )  # fmt: skip
    extra = {
        "bert": dict(max_position_embeddings=64, pad_token_id=0),
        "electra": dict(max_position_embeddings=64, pad_token_id=0, embedding_size=16),
        "albert": dict(max_position_embeddings=64, pad_token_id=0, embedding_size=16),
        "roberta": dict(max_position_embeddings=66, pad_token_id=1, type_vocab_size=1),
        "xlm-roberta": dict(max_position_embeddings=66, pad_token_id=1, type_vocab_size=1),
        "mpnet": dict(max_position_embeddings=66, pad_token_id=1),
        # DeBERTa-v3's shape: relative positions only, encoder.rel_embeddings + encoder.LayerNorm
        "deberta-v2": dict(
            max_position_embeddings=64,
            pad_token_id=0,
            type_vocab_size=0,
            relative_attention=True,
            position_buckets=16,
            pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
        ),  # fmt: skip
    }[family]
    return AutoConfig.for_model(family, vocab_size=vocab_size, **SIZES, **extra)


FAMILIES = [
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "electra",
    "albert",
    "deberta-v2",
    "mpnet",
]


def make_backbone(family: str, folder: Path) -> Path:
    from transformers import AutoModel

    tokenizer = tokenizer_of(family)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    AutoModel.from_config(config_of(family, len(tokenizer))).save_pretrained(folder)
    return folder
