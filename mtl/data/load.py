"""Task files → validated labels and once-tokenized ids.

Reads CSV / TSV / Parquet / JSON Lines, checks every row up front (empty text, labels outside
the declared classes, non-0/1 multi-hot values) and either stops with an error naming the file,
the rows and the fix, or drops them with a logged count (`data.on_bad_rows: drop`). Token ids
are computed once per file with the fast tokenizer, batched, and cached on disk keyed by the
tokenizer, max_length, preprocessing and the file's content.

The steps: mtl/data/files.py (readers), mtl/data/labels.py (checks), mtl/data/tokenize.py.
"""

from __future__ import annotations

from box import Box

from mtl.data.files import SPLITS, TaskData, cap_rows, read_table, resolve_path
from mtl.data.labels import build_task_data, class_weights, declared_classes, thresholds
from mtl.data.tasks import TaskMeta
from mtl.data.tokenize import preprocessor, tokenize
from mtl.errors import DataError


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
            frame = read_table(path, key, spec.encoding, spec.text_column)
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
