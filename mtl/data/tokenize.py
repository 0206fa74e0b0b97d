"""Text preprocessing hooks and tokenization: token ids computed once per file with the fast
tokenizer, batched, and cached on disk keyed by the tokenizer, max_length, preprocessing and the
file's content."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from box import Box

from mtl.errors import ConfigError
from mtl.io import atomic_write
from mtl.portable import normalize_tweet

# --- text preprocessing -------------------------------------------------------------------
# normalize_tweet lives in mtl/portable.py, the file ONNX exports carry, so both apply the same one


def preprocessor(name: str | None) -> Callable[[str], str]:
    """`null` (identity), `tweet`, or `package.module:function` for a hook of your own."""
    if not name:
        return lambda text: text
    if name == "tweet":
        return normalize_tweet
    module_name, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"Config key 'data.preprocess' is '{name}': use null, 'tweet', or 'package.module:function' "
            f"naming an importable function."
        ) from None


# --- tokenization with an on-disk cache ------------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> str:
    cached = getattr(tokenizer, "_mtl_fingerprint", None)
    if cached is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        source = (
            backend.to_str()
            if backend is not None
            else f"{type(tokenizer).__name__}:{tokenizer.name_or_path}"
        )
        cached = hashlib.sha256(source.encode()).hexdigest()[:16]
        tokenizer._mtl_fingerprint = cached
    return cached


def token_cache_dir(cfg: Box) -> Path:
    return Path(cfg.data.cache_dir or Path(cfg.run.output_dir) / ".token_cache")


def tokenize(texts: list[str], tokenizer, cfg: Box, path: Path, key: str) -> list[np.ndarray]:
    """Token ids per text (truncated to max_length, unpadded), from the cache when it has them."""
    digest = hashlib.sha256()
    for part in (tokenizer_fingerprint(tokenizer), str(cfg.data.max_length), "\x1f".join(texts)):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    cache_dir = token_cache_dir(cfg)
    cache_file = cache_dir / f"{path.stem}-{digest.hexdigest()[:24]}.npz"
    if cache_file.is_file():
        with np.load(cache_file) as stored:
            return np.split(stored["ids"], stored["offsets"][1:-1])
    ids = encode_texts(texts, tokenizer, cfg.data.max_length)
    offsets = np.cumsum([0] + [len(x) for x in ids])
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, ids=flat, offsets=offsets)

    atomic_write(cache_file, save)
    return ids


def encode_texts(
    texts: list[str], tokenizer, max_length: int, chunk: int = 4096
) -> list[np.ndarray]:
    """Batched fast-tokenizer encoding; one call per chunk keeps memory flat on large files."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), chunk):
        enc = tokenizer(
            texts[start : start + chunk],
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        out.extend(np.asarray(x, dtype=np.int32) for x in enc["input_ids"])
    return out
