"""The training paths: ours under Lightning (mtl), ours in a plain loop (bare_pytorch), and the
in-memory, length-sorted ceiling (bound)."""

from __future__ import annotations

import time

import numpy as np

from mtl.bench.meter import Meter, epochs_of, synchronize, timed_loop, to_device
from mtl.bench.setup import PlainStep, Setup
from mtl.errors import MTLError


def run_mtl(setup: Setup, warmup: int, steps: int) -> dict:
    """Ours: the real LightningModule and DataLoader under Trainer.fit; timed by a callback."""
    import lightning as L

    meter = Meter()
    device = setup.device

    class StepClock(L.Callback):
        def __init__(self):
            self.done = 0
            self.start = self.stop = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if warmup <= self.done < warmup + steps:
                meter.record(batch["attention_mask"])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.done += 1  # after the optimizer step of this batch
            if warmup <= self.done <= warmup + steps:
                meter.mark(device)
            if self.done == warmup:
                synchronize(device)
                self.start = time.perf_counter()
            elif self.done == warmup + steps:
                synchronize(device)
                self.stop = time.perf_counter()

    clock = StepClock()
    loader = setup.loader()
    total = warmup + steps
    cfg = setup.cfg
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        max_steps=total,
        max_epochs=-1,
        limit_train_batches=min(total, len(loader)),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        accumulate_grad_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[clock],
        default_root_dir=cfg.run.output_dir,
    )
    module = setup.module()
    trainer.fit(module, train_dataloaders=loader)
    if clock.stop is None:
        raise MTLError(f"mtl: Trainer stopped after {clock.done} of {total} steps")
    return meter.result(clock.stop - clock.start)


def run_bare(setup: Setup, warmup: int, steps: int) -> dict:
    """Our DataLoader and model_step in a plain loop: the difference to `mtl` is Lightning."""
    step = PlainStep(setup, setup.module(), warmup + steps)
    return timed_loop(step, epochs_of(setup.loader()), warmup, steps)


def planned_batches(setup: Setup, count: int) -> list[np.ndarray]:
    """The dataset indices of the first `count` batches our sampler serves (what mtl trains on)."""
    sampler = setup.loader().batch_sampler
    chosen: list[np.ndarray] = []
    epoch = 0
    while len(chosen) < count:
        sampler.set_epoch(epoch)
        chosen.extend(np.asarray(b) for b in sampler)
        epoch += 1
    return chosen[:count]


def run_bound(setup: Setup, warmup: int, steps: int) -> dict:
    """Exactly the rows of mtl's warm-up and timed batches, each set sorted by length and cut into
    as many batches (exact padding, no multiple of 8), collated and on the device beforehand."""
    from mtl.sampling import Collator, MultiTaskDataset

    loader = setup.loader()
    dataset: MultiTaskDataset = loader.dataset
    collate = Collator(setup.tokenizer.pad_token_id, loader.collate_fn.task_widths)
    planned = planned_batches(setup, warmup + steps)
    rng = np.random.default_rng(setup.cfg.seed)
    stream = []
    for group in (planned[:warmup], planned[warmup:]):
        rows = np.concatenate(group)
        rows = rows[np.argsort(dataset.lengths[rows], kind="stable")]
        chunks = np.array_split(rows, len(group))
        stream.extend(
            to_device(collate([dataset[int(i)] for i in chunks[k]]), setup.device)
            for k in rng.permutation(len(chunks))
        )
    step = PlainStep(setup, setup.module(), warmup + steps)
    return timed_loop(step, iter(stream), warmup, steps)
