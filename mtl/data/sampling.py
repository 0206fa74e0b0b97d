"""One stream over several tasks: the dataset, the batch sampler and the padding collator.

Sampling modes decide how many rows of each task an epoch holds:
    proportional  every row once (the seed notebook's shuffled concatenation)
    temperature   p_k ∝ n_k^(1/T): small tasks up-sampled, large ones down-sampled
    uniform       the same number of rows from every task
Rows are shuffled across tasks, so batches mix tasks; within windows of `batch_size * 50` rows
they are grouped by length so a batch pads little. Under DDP every rank takes a disjoint shard
of the epoch's batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mtl.data.files import TaskData

LENGTH_WINDOW = 50  # batches per length-sorting window: big enough to sort, small enough to mix


class MultiTaskDataset(Dataset):
    """Rows of several tasks in one index space; item i → (task index, ids, label, row)."""

    def __init__(self, parts: dict[str, TaskData | None], task_names: list[str]):
        self.task_names = task_names
        self.parts = [parts.get(name) for name in task_names]
        sizes = [0 if p is None else len(p) for p in self.parts]
        self.offsets = np.cumsum([0] + sizes)
        self.task_ids = np.repeat(np.arange(len(task_names)), sizes)
        self.lengths = np.array(
            [len(ids) for p in self.parts if p is not None for ids in p.input_ids], dtype=np.int64
        )

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, np.ndarray | int | None, int]:
        task = int(self.task_ids[index])
        local = int(index - self.offsets[task])
        part = self.parts[task]
        label = None if part.labels is None else part.labels[local]
        return task, part.input_ids[local], label, int(part.rows[local])

    def task_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


SAMPLING_MODES = ("proportional", "temperature", "uniform")  # sampling.mode


def task_sample_counts(sizes: np.ndarray, mode: str, temperature: float) -> np.ndarray:
    """Rows per task in one epoch; the epoch keeps the total number of rows."""
    if mode == "proportional":
        return sizes.copy()
    present = sizes > 0
    if mode == "uniform":
        weights = present.astype(np.float64)
    else:
        weights = np.where(present, sizes.astype(np.float64) ** (1.0 / temperature), 0.0)
    probs = weights / weights.sum()
    counts = np.floor(probs * sizes.sum()).astype(np.int64)
    counts[np.argmax(probs)] += sizes.sum() - counts.sum()  # rounding remainder
    return counts


def expected_rows_per_batch(
    sizes: np.ndarray, mode: str, temperature: float, batch_size: int
) -> np.ndarray:
    """Per task, the rows it has in an average training batch under this sampling."""
    counts = task_sample_counts(np.asarray(sizes), mode, temperature).astype(np.float64)
    return batch_size * counts / max(1.0, counts.sum())


class MultiTaskBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices. Deterministic from (seed, epoch); `set_epoch` reshuffles.

    `train=False` gives the evaluation order: every row exactly once, sorted by length, sharded
    across ranks without padding, so metrics over all ranks see each row once. Under DDP the rows
    of each task are dealt to the ranks in turn, so every rank holds rows of every task (with at
    least world_size rows): metric states then exist on every rank when they are synced.
    """

    def __init__(
        self,
        task_ids: np.ndarray,
        lengths: np.ndarray,
        batch_size: int,
        *,
        train: bool = True,
        mode: str = "proportional",
        temperature: float = 2.0,
        length_grouping: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.task_ids = np.asarray(task_ids)
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.train = train
        self.mode = mode
        self.temperature = temperature
        self.length_grouping = length_grouping
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0  # batches the next pass leaves out (start_after)
        # Lightning calls `dataloader.batch_sampler.sampler.set_epoch(epoch)` (never the batch
        # sampler's own set_epoch): without this hook every epoch replays epoch 0's order
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_after(self, batches_done: int) -> None:
        """The next pass leaves out the epoch's first `batches_done` batches (this rank's): a fit
        resumed mid-epoch continues with the batches the interrupted one had not reached. `len()`
        stays the epoch's full length, as the loop counts the restored batches as done."""
        self.skip = batches_done

    def epoch_indices(self, rng: np.random.Generator) -> np.ndarray:
        """The rows of this epoch, shuffled across tasks."""
        num_tasks = int(self.task_ids.max()) + 1 if len(self.task_ids) else 0
        sizes = np.bincount(self.task_ids, minlength=num_tasks)
        counts = task_sample_counts(sizes, self.mode, self.temperature)
        chosen = []
        for task, count in enumerate(counts):
            rows = np.flatnonzero(self.task_ids == task)
            if count == 0 or len(rows) == 0:
                continue
            repeats = math.ceil(count / len(rows))  # up-sampling cycles through fresh permutations
            chosen.append(np.concatenate([rng.permutation(rows) for _ in range(repeats)])[:count])
        return rng.permutation(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)

    def all_batches(self) -> list[np.ndarray]:
        """Every rank's batches of this epoch, before sharding."""
        if not self.train:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        indices = self.epoch_indices(rng)
        if self.length_grouping:
            window = self.batch_size * LENGTH_WINDOW
            indices = (
                np.concatenate(
                    [
                        chunk[np.argsort(self.lengths[chunk], kind="stable")]
                        for chunk in np.array_split(
                            indices, max(1, math.ceil(len(indices) / window))
                        )
                    ]
                )
                if len(indices)
                else indices
            )
        batches = [
            indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)
        ]
        if self.length_grouping:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def eval_shard(self) -> np.ndarray:
        """This rank's evaluation rows, sorted by length: each task's rows (by length) dealt in turn."""
        order = np.argsort(self.lengths, kind="stable")
        if self.world_size == 1:
            return order
        ranks = np.empty(len(order), dtype=np.int64)
        for task in np.unique(self.task_ids):
            mine = np.flatnonzero(self.task_ids[order] == task)
            ranks[mine] = np.arange(len(mine)) % self.world_size
        return order[ranks == self.rank]

    def __iter__(self):
        if not self.train:
            rows = self.eval_shard()
            for i in range(0, len(rows), self.batch_size):
                yield rows[i : i + self.batch_size].tolist()
            return
        skip, self.skip = self.skip, 0  # for the pass that starts drawing now
        batches = self.all_batches()
        if self.world_size > 1 and len(batches) % self.world_size:
            # every rank must run the same number of steps: repeat a few batches to even out
            pad = self.world_size - len(batches) % self.world_size
            batches += [batches[i % len(batches)] for i in range(pad)]
        for batch in batches[self.rank :: self.world_size][skip:]:
            yield batch.tolist()

    def __len__(self) -> int:
        if not self.train:
            return math.ceil(len(self.eval_shard()) / self.batch_size)
        num_tasks = int(self.task_ids.max()) + 1 if len(self.task_ids) else 0
        sizes = np.bincount(self.task_ids, minlength=num_tasks)
        rows = int(task_sample_counts(sizes, self.mode, self.temperature).sum())
        return math.ceil(math.ceil(rows / self.batch_size) / self.world_size)


class _EpochHook:
    """The `.sampler` Lightning looks for on a batch sampler; forwards `set_epoch` to it."""

    def __init__(self, batch_sampler: MultiTaskBatchSampler):
        self.batch_sampler = batch_sampler

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class TrainLoader(DataLoader):
    """The training loader over a MultiTaskBatchSampler. A pass starts at its first batch request,
    not at `iter()`, and leaves out the batches `batches_done()` reports then.

    Lightning creates the training iterator before it restores a checkpoint's loops (the scheduler
    asks for `estimated_stepping_batches` first) and, resumed mid-epoch, counts the restored batches
    as done while iterating the loader from its start: without the skip, a fold resumed at batch 15
    of 30 retrained batches 0-14 and never saw 15-29 that epoch. With worker processes a
    DataLoader draws its first batches of indices when it is iterated, before the restore and
    before Lightning's `set_epoch`: starting at the first request gets both the epoch and the skip
    right."""

    def __init__(self, *args, batches_done: Callable[[], int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def __iter__(self):
        return _LazyPass(self)

    def start_pass(self):
        if self.batches_done is not None:
            self.batch_sampler.start_after(self.batches_done())
        return super().__iter__()


class _LazyPass:
    """One pass of a TrainLoader: the DataLoader's own iterator, created at the first batch."""

    def __init__(self, loader: TrainLoader):
        self.loader = loader
        self.iterator = None

    def __iter__(self):
        return self

    def __next__(self):
        if self.iterator is None:
            self.iterator = self.loader.start_pass()
        return next(self.iterator)

    def __len__(self) -> int:
        return len(self.loader)


class Collator:
    """Pads a batch to its longest sequence (rounded up to `pad_to_multiple_of`) and groups labels.

    Returns input_ids / attention_mask (B, T), task_ids (B,), and per task: `index` (positions of
    its rows in the batch), `targets` and `rows`; tasks absent from the batch get empty tensors.
    """

    def __init__(
        self, pad_id: int, task_widths: dict[str, int | None], pad_to_multiple_of: int | None = None
    ):
        self.pad_id = pad_id
        self.task_names = list(task_widths)
        self.task_widths = task_widths  # None: class index targets; C: multi-hot with C columns
        self.multiple = pad_to_multiple_of or 1

    def __call__(self, items: list[tuple]) -> dict:
        longest = max(len(ids) for _, ids, _, _ in items)
        width = -(-longest // self.multiple) * self.multiple
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, (_, ids, _, _) in enumerate(items):
            input_ids[i, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
            attention_mask[i, : len(ids)] = 1
        task_ids = torch.tensor([t for t, _, _, _ in items], dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "task_ids": task_ids}
        batch["index"], batch["targets"], batch["rows"] = {}, {}, {}
        for k, name in enumerate(self.task_names):
            members = [i for i, (t, _, _, _) in enumerate(items) if t == k]
            batch["index"][name] = torch.tensor(members, dtype=torch.long)
            batch["rows"][name] = torch.tensor([items[i][3] for i in members], dtype=torch.long)
            batch["targets"][name] = self._targets(
                [items[i][2] for i in members], self.task_widths[name]
            )
        return batch

    @staticmethod
    def _targets(labels: list, width: int | None) -> torch.Tensor:
        if any(label is None for label in labels):
            return torch.zeros((0,) if width is None else (0, width))  # unlabeled test rows
        if width is None:
            return torch.tensor(labels, dtype=torch.long)
        if not labels:
            return torch.zeros((0, width), dtype=torch.float32)
        return torch.from_numpy(np.stack(labels).astype(np.float32))
