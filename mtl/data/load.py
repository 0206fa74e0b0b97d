"""Task files → validated labels and once-tokenized ids.

Reads CSV / TSV / Parquet / JSON Lines, checks every row up front (empty text, labels outside
the declared classes, non-0/1 multi-hot values) and either stops with an error naming the file,
the rows and the fix, or drops them with a logged count (`data.on_bad_rows: drop`). Token ids
are computed once per file with the fast tokenizer, batched, and cached on disk keyed by the
tokenizer, max_length, preprocessing and the file's content.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from box import Box

from mtl.data.tasks import TASK_TYPES, TaskMeta
from mtl.errors import ConfigError, DataError, first_rows
from mtl.io import FILE_FORMATS, atomic_write, undecodable_at

log = logging.getLogger(__name__)

# format (mtl.io.FILE_FORMATS) → (path, text encoding (None: UTF-8; Parquet stores its own) → frame)
READERS: dict[str, Callable[[Path, str | None], pd.DataFrame]] = {
    "csv": lambda p, enc: pd.read_csv(p, keep_default_na=False, na_values=[""], encoding=enc),
    "tsv": lambda p, enc: pd.read_csv(
        p, sep="\t", keep_default_na=False, na_values=[""], encoding=enc
    ),
    "parquet": lambda p, enc: pd.read_parquet(p),
    "jsonl": lambda p, enc: pd.read_json(p, lines=True, encoding=enc),
}
SPLITS = ("train", "val", "test")


@dataclass
class TaskData:
    """One split of one task: texts, token ids and labels, row-aligned."""

    task: str
    split: str
    path: Path
    rows: np.ndarray  # (N,) 0-based data-row numbers in the source file
    texts: list[str]
    input_ids: list[np.ndarray]  # N arrays of int32, unpadded
    labels: (
        np.ndarray | None
    )  # (N,) int64 class index, or (N, C) float32 multi-hot; None if unlabeled
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: np.ndarray) -> TaskData:
        index = np.asarray(index, dtype=np.int64)
        return TaskData(
            task=self.task,
            split=self.split,
            path=self.path,
            rows=self.rows[index],
            texts=[self.texts[i] for i in index],
            input_ids=[self.input_ids[i] for i in index] if self.input_ids else [],
            labels=None if self.labels is None else self.labels[index],
            groups=None if self.groups is None else self.groups[index],
        )


def resolve_path(cfg: Box, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else Path(cfg.data_dir).expanduser() / path


def read_table(path: Path, key: str, encoding: str | None = None) -> pd.DataFrame:
    """Read one task file; `key` is the config key that named it, for the error message."""
    if not path.is_file():
        raise DataError(
            f"File not found: {path} (from config key '{key}'). Fix the path or data_dir."
        )
    reader = READERS.get(FILE_FORMATS.get(path.suffix.lower()))
    if reader is None:
        raise DataError(
            f"Cannot read {path} (config key '{key}'): unknown extension '{path.suffix}'. "
            f"Use one of {', '.join(FILE_FORMATS)}."
        )
    try:
        frame = reader(path, encoding)
    except UnicodeError as err:
        raise DataError(undecodable(path, key, encoding, err)) from None
    except pd.errors.EmptyDataError:
        raise DataError(
            f"File {path} (config key '{key}') is empty: it needs a header and data rows."
        ) from None
    except (ValueError, pd.errors.ParserError, OSError) as err:
        raise DataError(f"Cannot parse {path} (config key '{key}'): {err}") from None
    if len(frame) == 0:
        raise DataError(f"File {path} (config key '{key}') has a header but no data rows.")
    return frame


def undecodable(path: Path, key: str, encoding: str | None, err: UnicodeError) -> str:
    codec = encoding or "utf-8"
    task = key.split(".")[1] if key.count(".") >= 2 else "<task>"
    return (
        f"File {path} (config key '{key}') cannot be read as {codec} text: "
        f"{undecodable_at(path, codec, err)} Save the file as UTF-8 (e.g. iconv -f cp1252 -t "
        f"utf-8 old.csv > new.csv), or set tasks.{task}.encoding to the encoding it was saved in "
        f"(e.g. tasks.{task}.encoding=cp1252)."
    )


def load_tasks(cfg: Box, tokenizer) -> tuple[dict[str, dict[str, TaskData]], dict[str, TaskMeta]]:
    """Read, check and tokenize every file of every task. Returns (data[task][split], metas)."""
    preprocess = preprocessor(cfg.data.preprocess)
    data: dict[str, dict[str, TaskData]] = {}
    metas: dict[str, TaskMeta] = {}
    for name, spec in cfg.tasks.items():
        data[name] = {}
        for split in SPLITS:
            if not spec[split]:
                continue
            key = f"tasks.{name}.{split}"
            path = resolve_path(cfg, spec[split])
            frame = read_table(path, key, spec.encoding)
            if split == "train":
                metas[name] = TaskMeta(
                    name=name, type=spec.type, classes=declared_classes(spec, frame, path)
                )
            part = build_task_data(
                frame,
                path,
                name,
                split,
                spec,
                metas[name],
                cfg.data.on_bad_rows,
                cfg.data.max_dropped_fraction,
            )
            if split == "train" and len(part) == 0:
                raise DataError(
                    f"Task '{name}' has no training rows left in {path} after dropping bad rows."
                )
            cap = {"train": cfg.data.max_train_rows, "val": cfg.data.max_eval_rows}.get(split)
            if split == "train" and spec.max_train_rows is not None:
                cap = spec.max_train_rows  # this task's own budget
            if cap is not None and len(part) > cap:
                part = cap_rows(part, cap, cfg.seed)
            part.texts = [preprocess(t) for t in part.texts]
            part.input_ids = tokenize(part.texts, tokenizer, cfg, path, key)
            data[name][split] = part
        train = data[name]["train"]
        metas[name].class_weights = class_weights(spec, metas[name], train.labels)
        metas[name].threshold = thresholds(spec, metas[name])
    return data, metas


def cap_rows(part: TaskData, cap: int, seed: int) -> TaskData:
    """A seeded random subset of `cap` rows (`data.max_train_rows` / `max_eval_rows`), in file order.

    Seeded by the seed, the task's name and the split, not the task's position in the config, so
    a task keeps the same rows in a single-task and a multi-task run."""
    key = zlib.crc32(f"{part.task}/{part.split}".encode())
    rng = np.random.default_rng([seed, key])
    keep = np.sort(rng.choice(len(part), size=cap, replace=False))
    log.info(
        "%s: using a random %d of %d %s rows (max_%s_rows); %d dropped",
        part.path,
        cap,
        len(part),
        part.split,
        "train" if part.split == "train" else "eval",
        len(part) - cap,
    )
    return part.subset(keep)


def declared_classes(spec: Box, frame: pd.DataFrame, path: Path) -> list:
    """The task's classes: label columns (multilabel), the config's list, the task type's fixed
    classes (binary: 0, 1), or the training labels."""
    task_type = TASK_TYPES[spec.type]
    if task_type.multilabel:
        return list(spec.label_columns)
    if spec.classes:
        return list(spec.classes)
    if task_type.classes is not None:
        return list(task_type.classes)
    column = spec.label_columns[0]
    if column not in frame.columns:
        return []  # reported with the other column checks
    values = frame[column].dropna().unique().tolist()
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def build_task_data(
    frame: pd.DataFrame,
    path: Path,
    task: str,
    split: str,
    spec: Box,
    meta: TaskMeta,
    on_bad_rows: str,
    max_dropped: float = 1.0,
) -> TaskData:
    key = f"tasks.{task}.{split}"
    labelled = split != "test" or all(c in frame.columns for c in spec.label_columns)
    needed = [spec.text_column] + (list(spec.label_columns) if labelled else [])
    if spec.group_column and split == "train":
        needed.append(spec.group_column)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(
            f"File {path} (config key '{key}') has no column {', '.join(map(repr, missing))}; "
            f"its columns are {list(frame.columns)}. Set tasks.{task}.text_column / label_columns to match."
        )
    text = frame[spec.text_column]
    bad: dict[str, np.ndarray] = {}
    empty = text.isna().to_numpy() | (text.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        bad["empty or missing text"] = empty
    labels = None
    if labelled:
        labels, invalid, problem = encode_labels(frame, spec, meta)
        if invalid.any():
            bad[problem] = invalid
    drop = np.zeros(len(frame), dtype=bool)
    for problem, mask in bad.items():
        rows = np.flatnonzero(mask) + 1
        if on_bad_rows == "error":
            raise DataError(
                f"File {path} (config key '{key}'): {problem} in data rows {first_rows(rows)} "
                f"(1-based, header not counted). Fix or remove these rows, or set data.on_bad_rows=drop "
                f"to skip them with a logged count."
            )
        drop |= mask
    if drop.any():  # refused before anything is logged as dropped
        train_labels = labels if split == "train" else None
        check_drop(frame, path, key, spec, meta, train_labels, drop, bad, max_dropped)
    for problem, mask in bad.items():
        rows = np.flatnonzero(mask) + 1
        log.warning(
            "%s: dropping %d rows with %s (data rows %s)",
            path,
            len(rows),
            problem,
            first_rows(rows),
        )
    keep = np.flatnonzero(~drop)
    groups = (
        frame[spec.group_column].to_numpy()[keep]
        if spec.group_column and split == "train"
        else None
    )
    return TaskData(
        task=task,
        split=split,
        path=path,
        rows=keep,
        texts=text.iloc[keep].astype(str).tolist(),
        input_ids=[],
        labels=None if labels is None else labels[keep],
        groups=groups,
    )


def check_drop(
    frame: pd.DataFrame,
    path: Path,
    key: str,
    spec: Box,
    meta: TaskMeta,
    labels: np.ndarray | None,
    drop: np.ndarray,
    bad: dict[str, np.ndarray],
    max_dropped: float,
) -> None:
    """`on_bad_rows=drop` is for a few broken rows. Dropping a large share of a file, or every
    training row of a class, means the file and the config disagree (e.g. `classes` that do not
    match the file's labels): training on what is left would silently be a different task."""
    counts = "; ".join(f"{int(mask.sum())} with {problem}" for problem, mask in bad.items())
    share = drop.mean()
    if share > max_dropped:
        raise DataError(
            f"File {path} (config key '{key}'): data.on_bad_rows=drop would drop {int(drop.sum())} "
            f"of {len(drop)} rows ({share:.0%}), more than data.max_dropped_fraction="
            f"{max_dropped} allows ({counts}). So many bad rows usually mean the file and the "
            f"config disagree: check tasks.{meta.name}.classes / label_columns against the file, "
            f"fix the rows, or raise data.max_dropped_fraction if dropping them is intended."
        )
    if labels is None:
        return
    kept = meta.class_counts(labels[~drop])
    if meta.multilabel:  # a label that no row of the file has is not lost by dropping
        kept = np.where(meta.class_counts(labels) > 0, kept, 1)
    lost = [c for c, k in zip(meta.classes, kept, strict=True) if k == 0]
    if lost:
        column = spec.label_columns[0]
        seen = ""
        if not meta.multilabel and column in frame.columns:
            top = frame[column][drop].astype(str).value_counts().head(5)
            seen = (
                " The dropped rows' labels: "
                + ", ".join(f"{v!r} ({n})" for v, n in top.items())
                + "."
            )
        raise DataError(
            f"File {path} (config key '{key}'): data.on_bad_rows=drop would leave class(es) "
            f"{lost} of task '{meta.name}' with no training rows ({counts}).{seen} The declared "
            f"classes {list(meta.classes)} probably do not match the file's labels: fix "
            f"tasks.{meta.name}.classes (quote names YAML could read otherwise) or the file."
        )


def encode_labels(
    frame: pd.DataFrame, spec: Box, meta: TaskMeta
) -> tuple[np.ndarray, np.ndarray, str]:
    """Labels as class indices (N,) or multi-hot (N, C), a mask of invalid rows, and what is wrong."""
    if meta.multilabel:
        values = (
            frame[list(spec.label_columns)]
            .apply(pd.to_numeric, errors="coerce")
            .to_numpy(dtype=np.float64)
        )
        invalid = ~np.isin(values, (0.0, 1.0)).all(axis=1)
        cols = ", ".join(spec.label_columns)
        return (
            np.nan_to_num(values).astype(np.float32),
            invalid,
            f"a value other than 0/1 in columns [{cols}]",
        )
    raw = frame[spec.label_columns[0]]
    lookup = {_label_key(c): i for i, c in enumerate(meta.classes)}
    codes = np.array([lookup.get(_label_key(v), -1) for v in raw], dtype=np.int64)
    problem = f"a label in column '{spec.label_columns[0]}' outside the declared classes {list(meta.classes)}"
    return codes, codes < 0, problem


def _label_key(value) -> str:
    """Compare labels as text so 1, 1.0, '1' and True all mean class 1."""
    if isinstance(value, bool | np.bool_):
        value = int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


def class_weights(spec: Box, meta: TaskMeta, labels: np.ndarray) -> list[float] | None:
    """`auto`: inverse class frequency (multi-class) or negatives/positives per label (multi-label)."""
    weights = spec.class_weights
    if weights is None:
        return None
    if weights == "auto":
        counts = meta.class_counts(labels)
        if meta.multilabel:  # BCE's pos_weight: negatives / positives
            return ((len(labels) - counts) / np.maximum(counts, 1.0)).round(6).tolist()
        counts = counts.astype(np.float64)
        return (len(labels) / (meta.num_outputs * np.maximum(counts, 1.0))).round(6).tolist()
    if len(weights) != meta.num_outputs or not all(isinstance(w, int | float) for w in weights):
        raise ConfigError(
            f"Config key 'tasks.{meta.name}.class_weights' must hold {meta.num_outputs} numbers "
            f"(one per class {list(meta.classes)}), got {list(weights)}."
        )
    return [float(w) for w in weights]


def thresholds(spec: Box, meta: TaskMeta) -> list[float]:
    """Per-class decision thresholds for multi-label tasks (`tuned` starts at 0.5 and is tuned later)."""
    if not meta.multilabel:
        return []
    value = spec.threshold
    if isinstance(value, list):
        if len(value) != meta.num_outputs:
            raise ConfigError(
                f"Config key 'tasks.{meta.name}.threshold' must hold {meta.num_outputs} numbers, got {value}."
            )
        return [float(v) for v in value]
    return [0.5 if value == "tuned" else float(value)] * meta.num_outputs


# --- text preprocessing -------------------------------------------------------------------

_USER = re.compile(r"@\w+")
_URL = re.compile(r"https?://\S+|www\.\S+")
_SPACE = re.compile(r"\s+")


def normalize_tweet(text: str) -> str:
    """Users → @user, links → http, HTML entities decoded, whitespace collapsed."""
    text = _USER.sub("@user", text)
    text = _URL.sub("http", text)
    text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    return _SPACE.sub(" ", text).strip()


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
