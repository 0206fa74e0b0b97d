"""BASELINE: the seed notebook's training pipeline (seed_style path), kept as it was written there:
per-item tokenization padded to max_length, a shuffled ConcatDataset, default collate."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from mtl.harness.bench.paths import PlainPath, Plan
from mtl.harness.bench.setup import PlainStep, Setup


class SeedStyleDataset(torch.utils.data.Dataset):
    """BASELINE — the seed notebook's Dataset: tokenizes ONE text per __getitem__, padded to
    max_length. Labels as a fixed-width float vector (class index in slot 0, or multi-hot) so the
    default collate can stack rows of different tasks."""

    def __init__(self, part, task_id: int, multilabel: bool, width: int, tokenizer, max_length):
        self.texts = part.texts
        self.labels = part.labels
        self.task_id = task_id
        self.multilabel = multilabel
        self.width = width
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        enc = self.tokenizer(
            self.texts[index],
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        label = torch.zeros(self.width)
        if self.multilabel:
            label[: len(self.labels[index])] = torch.as_tensor(self.labels[index])
        else:
            label[0] = float(self.labels[index])
        return {
            "input_ids": enc["input_ids"][0],
            "attention_mask": enc["attention_mask"][0],
            "task_id": self.task_id,
            "label": label,
        }


def seed_style_batches(setup: Setup) -> Iterator[dict]:
    """BASELINE loader: shuffled ConcatDataset + default collate; the loop splits rows by task."""
    from torch.utils.data import ConcatDataset, DataLoader

    names = list(setup.parts)
    width = max(meta.num_outputs for meta in setup.metas.values())
    datasets = [
        SeedStyleDataset(
            setup.parts[name],
            k,
            setup.metas[name].multilabel,
            width,
            setup.tokenizer,
            setup.cfg.data.max_length,
        )
        for k, name in enumerate(names)
    ]
    generator = torch.Generator().manual_seed(setup.cfg.seed)
    loader = DataLoader(
        ConcatDataset(datasets),
        batch_size=setup.cfg.data.batch_size,
        shuffle=True,
        num_workers=setup.cfg.data.num_workers,
        generator=generator,
    )
    while True:
        for raw in loader:
            batch = {"input_ids": raw["input_ids"], "attention_mask": raw["attention_mask"]}
            batch["index"], batch["targets"] = {}, {}
            for k, name in enumerate(names):
                meta = setup.metas[name]
                members = torch.nonzero(raw["task_id"] == k).flatten()
                labels = raw["label"][members]
                batch["index"][name] = members
                batch["targets"][name] = (
                    labels[:, : meta.num_outputs] if meta.multilabel else labels[:, 0].long()
                )
            yield batch


def seed_style_path(setup: Setup, plan: Plan) -> PlainPath:
    stream = seed_style_batches(setup)
    step = PlainStep(setup, setup.module(), plan.total)
    return PlainPath(step, lambda count: itertools.islice(stream, count))
