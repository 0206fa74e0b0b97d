"""`Collator`: dynamic padding, attention masks, per-task index / targets / rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mtl.data.files import TaskData
from mtl.data.sampling import Collator, MultiTaskDataset

PAD = 0
WIDTHS = {"toxicity": None, "emotion": 7, "sentiment": None}


def ids(n: int, start: int = 5) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int32)


def multi_hot(*on: int) -> np.ndarray:
    row = np.zeros(7, dtype=np.float32)
    row[list(on)] = 1.0
    return row


def items() -> list[tuple]:
    # (task index, token ids, label, source row)
    return [
        (0, ids(3), 1, 10),
        (1, ids(6, 20), multi_hot(0, 3), 4),
        (0, ids(2, 40), 0, 11),
        (1, ids(4, 50), multi_hot(6), 0),
        (0, ids(5, 60), 1, 2),
    ]


def test_pads_to_longest_sequence_in_batch_not_max_length():
    batch = Collator(PAD, WIDTHS)(items())
    assert batch["input_ids"].shape == (5, 6)
    assert batch["attention_mask"].shape == (5, 6)
    assert batch["input_ids"].dtype == torch.long
    # a batch of short rows stays short
    short = Collator(PAD, WIDTHS)([(0, ids(2), 0, 0), (0, ids(3), 1, 1)])
    assert short["input_ids"].shape == (2, 3)


def test_attention_mask_matches_lengths_and_padding_uses_pad_id():
    pad_id = 99
    rows = items()
    batch = Collator(pad_id, WIDTHS)(rows)
    lengths = [len(x[1]) for x in rows]
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for i, (_, token_ids, _, _) in enumerate(rows):
        n = len(token_ids)
        assert batch["input_ids"][i, :n].tolist() == token_ids.tolist()
        assert (batch["input_ids"][i, n:] == pad_id).all()
        assert batch["attention_mask"][i, :n].eq(1).all()
        assert batch["attention_mask"][i, n:].eq(0).all()


def test_pad_to_multiple_of_rounds_the_width_up():
    assert Collator(PAD, WIDTHS, pad_to_multiple_of=8)(items())["input_ids"].shape == (5, 8)
    nine = [(0, ids(9), 0, 0)]
    assert Collator(PAD, WIDTHS, pad_to_multiple_of=8)(nine)["input_ids"].shape == (1, 16)
    eight = [(0, ids(8), 0, 0)]
    assert Collator(PAD, WIDTHS, pad_to_multiple_of=8)(eight)["input_ids"].shape == (1, 8)


def test_task_ids_follow_the_items():
    batch = Collator(PAD, WIDTHS)(items())
    assert batch["task_ids"].tolist() == [0, 1, 0, 1, 0]


def test_per_task_index_targets_and_rows_select_the_right_rows():
    batch = Collator(PAD, WIDTHS)(items())
    assert batch["index"]["toxicity"].tolist() == [0, 2, 4]
    assert batch["targets"]["toxicity"].tolist() == [1, 0, 1]
    assert batch["targets"]["toxicity"].dtype == torch.long
    assert batch["rows"]["toxicity"].tolist() == [10, 11, 2]

    assert batch["index"]["emotion"].tolist() == [1, 3]
    assert batch["targets"]["emotion"].dtype == torch.float32
    assert batch["targets"]["emotion"].shape == (2, 7)
    assert batch["targets"]["emotion"][0].nonzero().flatten().tolist() == [0, 3]
    assert batch["targets"]["emotion"][1].nonzero().flatten().tolist() == [6]
    assert batch["rows"]["emotion"].tolist() == [4, 0]
    # the index really points at that task's sequences
    for name, k in (("toxicity", 0), ("emotion", 1)):
        assert (batch["task_ids"][batch["index"][name]] == k).all()


def test_absent_tasks_get_empty_tensors_of_the_right_shape():
    only_toxicity = [(0, ids(3), 1, 0), (0, ids(2), 0, 1)]
    batch = Collator(PAD, WIDTHS)(only_toxicity)
    assert batch["index"]["emotion"].shape == (0,)
    assert batch["rows"]["emotion"].shape == (0,)
    assert batch["targets"]["emotion"].shape == (0, 7)
    assert batch["targets"]["emotion"].dtype == torch.float32
    assert batch["index"]["sentiment"].shape == (0,)
    assert batch["targets"]["sentiment"].shape == (0,)
    assert batch["targets"]["sentiment"].dtype == torch.long
    assert batch["index"]["sentiment"].dtype == torch.long


def test_unlabeled_rows_keep_index_and_rows_but_give_empty_targets():
    unlabeled = [(0, ids(3), None, 7), (1, ids(2), None, 8)]
    batch = Collator(PAD, WIDTHS)(unlabeled)
    assert batch["index"]["toxicity"].tolist() == [0]
    assert batch["rows"]["emotion"].tolist() == [8]
    assert batch["targets"]["toxicity"].shape == (0,)
    assert batch["targets"]["emotion"].shape == (0, 7)


def part(task: str, labels: np.ndarray, rows: list[int], lengths: list[int]) -> TaskData:
    return TaskData(
        task=task,
        split="train",
        path=Path(f"{task}.csv"),
        rows=np.array(rows),
        texts=["x"] * len(rows),
        input_ids=[ids(n, 5 + 10 * i) for i, n in enumerate(lengths)],
        labels=labels,
    )


def test_dataset_items_through_collator_map_back_to_source_rows():
    parts = {
        "toxicity": part("toxicity", np.array([1, 0, 1]), [3, 8, 9], [2, 4, 3]),
        "emotion": part("emotion", np.stack([multi_hot(1), multi_hot(2, 5)]), [0, 6], [5, 1]),
        "sentiment": None,
    }
    dataset = MultiTaskDataset(parts, list(WIDTHS))
    assert len(dataset) == 5
    batch = Collator(PAD, WIDTHS)([dataset[i] for i in (4, 0, 2, 3)])
    assert batch["input_ids"].shape == (4, 5)
    assert batch["rows"]["toxicity"].tolist() == [3, 9]
    assert batch["targets"]["toxicity"].tolist() == [1, 1]
    assert batch["index"]["toxicity"].tolist() == [1, 2]
    assert batch["rows"]["emotion"].tolist() == [6, 0]
    assert batch["targets"]["emotion"].tolist() == [multi_hot(2, 5).tolist(), multi_hot(1).tolist()]
    assert batch["targets"]["sentiment"].shape == (0,)
