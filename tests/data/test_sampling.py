"""The multi-task batch sampler and the padding collator (mtl/data/sampling.py), on synthetic rows."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from mtl.data.sampling import Collator, MultiTaskBatchSampler, task_sample_counts


def synthetic(sizes=(1600, 1000, 600), seed=0, max_len=120):
    """Task ids in task-major order (like MultiTaskDataset) and lengths independent of the task."""
    rng = np.random.default_rng(seed)
    task_ids = np.repeat(np.arange(len(sizes)), sizes)
    lengths = rng.integers(3, max_len, size=len(task_ids))
    return task_ids, lengths


def batches_of(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


@pytest.mark.parametrize("length_grouping", [True, False])
@pytest.mark.parametrize("batch_size", [32, 7])
def test_proportional_epoch_yields_every_row_exactly_once(length_grouping, batch_size):
    task_ids, lengths = synthetic()
    sampler = MultiTaskBatchSampler(
        task_ids, lengths, batch_size, length_grouping=length_grouping, seed=3
    )
    batches = batches_of(sampler)
    flat = np.concatenate(batches)
    assert len(batches) == len(sampler)
    assert np.array_equal(np.sort(flat), np.arange(len(task_ids)))
    assert all(len(b) == batch_size for b in batches[:-1]) or length_grouping
    assert sum(len(b) for b in batches) == len(task_ids)


def test_batches_are_length_grouped_and_still_mix_tasks():
    task_ids, lengths = synthetic()

    def mean_spread(grouping: bool) -> float:
        sampler = MultiTaskBatchSampler(task_ids, lengths, 32, length_grouping=grouping, seed=1)
        return float(np.mean([np.ptp(lengths[b]) for b in batches_of(sampler)]))

    grouped, random_batches = mean_spread(True), mean_spread(False)
    assert grouped < 0.1 * random_batches, (grouped, random_batches)

    sampler = MultiTaskBatchSampler(task_ids, lengths, 32, length_grouping=True, seed=1)
    batches = batches_of(sampler)
    mixed = np.mean([len(np.unique(task_ids[b])) > 1 for b in batches])
    assert mixed > 0.9  # lengths do not depend on the task here, so batches must mix tasks
    # batches are shuffled, not served shortest first
    longest = [lengths[b].max() for b in batches]
    assert not np.all(np.diff(longest) >= 0)


@pytest.mark.parametrize(
    "mode, temperature",
    [("temperature", 2.0), ("temperature", 3.0), ("uniform", 2.0), ("proportional", 2.0)],
)
def test_task_mix_matches_configured_proportions(mode, temperature):
    sizes = np.array([2000, 500, 100])
    task_ids, lengths = synthetic(tuple(sizes))
    sampler = MultiTaskBatchSampler(
        task_ids, lengths, 32, mode=mode, temperature=temperature, seed=5
    )
    flat = np.concatenate(batches_of(sampler))
    total = sizes.sum()
    assert len(flat) == total  # an epoch keeps the total number of rows
    if mode == "temperature":
        expected = sizes ** (1.0 / temperature) / (sizes ** (1.0 / temperature)).sum()
    elif mode == "uniform":
        expected = np.full(3, 1 / 3)
    else:
        expected = sizes / total
    share = np.bincount(task_ids[flat], minlength=3) / len(flat)
    assert np.allclose(share, expected, atol=0.005), (share, expected)
    # within the epoch the mix is spread out: every quarter of the batches holds every task
    # in roughly the configured share
    batches = batches_of(sampler)
    for part in np.array_split(np.arange(len(batches)), 4):
        rows = np.concatenate([batches[i] for i in part])
        share = np.bincount(task_ids[rows], minlength=3) / len(rows)
        assert np.allclose(share, expected, atol=0.06), (share, expected)


def test_up_sampling_cycles_rows_evenly_and_down_sampling_never_repeats():
    sizes = np.array([2000, 500, 100])
    task_ids, lengths = synthetic(tuple(sizes))
    sampler = MultiTaskBatchSampler(task_ids, lengths, 32, mode="uniform", seed=0)
    flat = np.concatenate(batches_of(sampler))
    counts = np.bincount(flat, minlength=len(task_ids))
    small = counts[task_ids == 2]  # ~867 draws from 100 rows
    assert small.max() - small.min() <= 1 and small.min() >= 8
    assert counts[task_ids == 0].max() == 1  # ~867 draws from 2000 rows: no repeats


def test_task_sample_counts_keep_the_total_and_skip_empty_tasks():
    sizes = np.array([1000, 0, 10])
    for mode in ("proportional", "temperature", "uniform"):
        counts = task_sample_counts(sizes, mode, 2.0)
        assert counts.sum() == sizes.sum()
        assert counts[1] == 0


def test_order_is_deterministic_given_seed_and_epoch_and_changes_across_epochs():
    task_ids, lengths = synthetic()

    def order(seed: int, epoch: int, **kwargs) -> list[list[int]]:
        sampler = MultiTaskBatchSampler(task_ids, lengths, 32, seed=seed, **kwargs)
        sampler.set_epoch(epoch)
        return batches_of(sampler)

    for kwargs in ({}, {"length_grouping": False}, {"mode": "temperature"}):
        assert order(7, 0, **kwargs) == order(7, 0, **kwargs)
        assert order(7, 3, **kwargs) == order(7, 3, **kwargs)
        assert order(7, 0, **kwargs) != order(7, 1, **kwargs)
        assert order(7, 0, **kwargs) != order(8, 0, **kwargs)
    # iterating twice without set_epoch replays the same epoch (resumable, rank-consistent)
    sampler = MultiTaskBatchSampler(task_ids, lengths, 32, seed=7)
    assert batches_of(sampler) == batches_of(sampler)


@pytest.mark.parametrize("rows", [3200, 3232])  # 100 batches (even), 101 batches (odd)
def test_two_ranks_get_disjoint_shards_with_equal_batch_counts(rows):
    task_ids, lengths = synthetic((rows // 2, rows - rows // 2))
    shards = []
    for rank in (0, 1):
        sampler = MultiTaskBatchSampler(task_ids, lengths, 32, seed=2, rank=rank, world_size=2)
        sampler.set_epoch(4)
        shards.append(batches_of(sampler))
        assert len(shards[-1]) == len(sampler)
    assert len(shards[0]) == len(shards[1])
    a, b = (np.concatenate(s) for s in shards)
    overlap = np.intersect1d(a, b)
    every = np.union1d(a, b)
    assert np.array_equal(every, np.arange(rows))  # together the ranks see every row
    total_batches = -(-rows // 32)
    if total_batches % 2 == 0:
        assert len(overlap) == 0
        assert len(a) + len(b) == rows
    else:
        # an odd number of batches is evened out by repeating the first batch on the last
        # rank (like DistributedSampler's padding): at most one batch of rows is seen twice
        assert 0 < len(overlap) <= 32
        assert len(a) + len(b) - len(overlap) == rows
    # every rank steps through a length-grouped, task-mixed shard of the same epoch
    assert all(len(batch) > 0 for shard in shards for batch in shard)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_order_covers_every_row_once_across_ranks(world_size):
    task_ids, lengths = synthetic((500, 300, 77))
    seen = []
    for rank in range(world_size):
        sampler = MultiTaskBatchSampler(
            task_ids, lengths, 64, train=False, rank=rank, world_size=world_size
        )
        batches = batches_of(sampler)
        assert len(batches) == len(sampler)
        # sorted by length: each batch holds no longer rows than the next one
        for first, second in zip(batches, batches[1:], strict=False):
            assert lengths[first].max() <= lengths[second].min()
        seen.extend(i for b in batches for i in b)
    assert len(seen) == len(task_ids)
    assert sorted(seen) == list(range(len(task_ids)))
    # eval ignores the sampling mode and the epoch: every row once, whatever the config
    sampler = MultiTaskBatchSampler(task_ids, lengths, 64, train=False, mode="uniform")
    sampler.set_epoch(5)
    assert sorted(i for b in sampler for i in b) == list(range(len(task_ids)))


def test_lightning_reshuffles_the_batch_sampler_every_epoch():
    """Lightning calls `batch_sampler.sampler.set_epoch`, not `batch_sampler.set_epoch`."""
    import lightning as L
    from torch.utils.data import DataLoader, Dataset

    class Rows(Dataset):
        def __len__(self):
            return 48

        def __getitem__(self, index):
            return index

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list] = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).append(batch.tolist())
            return self.weight.sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    task_ids, lengths = np.zeros(48, dtype=np.int64), np.arange(48) % 9
    sampler = MultiTaskBatchSampler(task_ids, lengths, 8, seed=0)
    loader = DataLoader(Rows(), batch_sampler=sampler, collate_fn=torch.tensor)
    module = Recorder()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L.Trainer(
            max_epochs=3,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
        ).fit(module, loader)
    assert sampler.epoch == 2
    assert module.seen[0] != module.seen[1] != module.seen[2]
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert module.seen[epoch] == batches_of(sampler)


def test_collator_pads_dynamically_and_groups_targets_by_task():
    items = [
        (0, np.array([5, 6, 7], dtype=np.int32), 1, 10),
        (1, np.array([5], dtype=np.int32), np.array([0, 1, 1], dtype=np.float32), 11),
        (0, np.array([5, 6, 7, 8, 9], dtype=np.int32), 0, 12),
    ]
    widths = {"tox": None, "emo": 3}
    batch = Collator(0, widths)(items)
    assert batch["input_ids"].shape == (3, 5)  # padded to the longest row, not max_length
    assert batch["attention_mask"].sum().item() == 9
    assert batch["input_ids"][1].tolist() == [5, 0, 0, 0, 0]
    assert batch["index"]["tox"].tolist() == [0, 2]
    assert batch["targets"]["tox"].tolist() == [1, 0]
    assert batch["rows"]["emo"].tolist() == [11]
    assert batch["targets"]["emo"].tolist() == [[0.0, 1.0, 1.0]]
    padded = Collator(0, widths, pad_to_multiple_of=8)(items)
    assert padded["input_ids"].shape == (3, 8)
    assert torch.equal(padded["attention_mask"][:, :5], batch["attention_mask"])
    only_tox = Collator(0, widths)(items[:1])
    assert only_tox["targets"]["emo"].shape == (0, 3)
    assert only_tox["index"]["emo"].numel() == 0
