"""The training paths, each run block by block (mtl/harness/bench/interleave.py): ours under Lightning
(mtl), ours in a plain loop (bare_pytorch) and the in-memory, length-sorted ceiling (bound).
The seed notebook's pipeline (the BASELINE) is in seed_style.py."""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from mtl.errors import MTLError
from mtl.harness.bench.meter import Meter, to_device
from mtl.harness.bench.setup import PlainStep, Setup
from mtl.model.module import MultiTaskModule
from mtl.model.optim import build_optimizer, build_scheduler, fused_allowed


@dataclass(frozen=True)
class Plan:
    """Steps per path: `warmup` once, then per block `lead_in` untimed and `block_steps` timed."""

    warmup: int
    blocks: int
    block_steps: int
    lead_in: int = 1  # absorbs what starting a block costs: a new Trainer.fit, a new loader pass

    @property
    def total(self) -> int:
        return self.warmup + self.blocks * (self.lead_in + self.block_steps)

    def stretches(self) -> list[int]:
        """The batch stream cut as the steps consume it: warm-up, then lead-in, timed, lead-in, ..."""
        return [self.warmup] + [self.lead_in, self.block_steps] * self.blocks


class PlainPath:
    """A PlainStep fed by `batches(n)`, an iterator over the next n batches of the path's stream."""

    def __init__(self, step: PlainStep, batches: Callable[[int], Iterator[dict]]):
        self.step = step
        self.batches = batches

    def run(self, untimed: int, timed: int, meter: Meter | None = None) -> None:
        """`untimed` steps, then `timed` ones into `meter`; a timed step includes fetching its batch."""
        stream = self.batches(untimed + timed)
        for i in range(untimed + timed):
            timing = meter is not None and i >= untimed
            if timing and i == untimed:
                meter.start_block()
            batch = to_device(next(stream), self.step.device)
            if timing:
                meter.record(batch["attention_mask"])
            self.step(batch)
            if timing:
                meter.step_done()
        if meter is not None and timed:
            meter.end_block()


class BlockBatches:
    """Our batch sampler as one endless stream (epoch after epoch), `size` batches per pass: every
    pass over the DataLoader (a fresh Trainer.fit per block for `mtl`) continues the last one.
    No `.sampler` attribute, so Lightning's set_epoch cannot rewind the stream."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.size = 0
        self._stream = self._endless()

    def _endless(self) -> Iterator[list[int]]:
        for epoch in itertools.count():
            self.batch_sampler.set_epoch(epoch)
            yield from self.batch_sampler

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.size):
            yield next(self._stream)

    def __len__(self) -> int:
        return self.size


def block_loader(setup: Setup) -> DataLoader:
    """Our training DataLoader (make_loader) with its batches served by BlockBatches."""
    loader = setup.loader()
    return DataLoader(
        loader.dataset,
        batch_sampler=BlockBatches(loader.batch_sampler),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
    )


class ContinuedModule(MultiTaskModule):
    """MultiTaskModule whose optimizer and LR schedule outlive a Trainer, so each block's
    Trainer.fit continues the AdamW state and schedule of the one before."""

    total_steps = 1
    _kept: dict | None = None
    _set_up = False

    def setup(self, stage: str) -> None:
        if not self._set_up:  # trainer.compile: compile the encoder once, not once per block
            self._set_up = True
            super().setup(stage)

    def configure_optimizers(self):
        if self._kept is None:
            optimizer = build_optimizer(
                self.model, self.weighting, self.cfg.optim, fused_allowed(self.cfg.trainer)
            )
            scheduler = build_scheduler(optimizer, self.cfg.optim, self.total_steps)
            self._kept = {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }
        return self._kept


class StepClock(L.Callback):
    """Feeds a Meter from Lightning's hooks; the clock starts as the last untimed step ends."""

    def __init__(self, untimed: int, total: int, meter: Meter | None):
        self.untimed, self.total, self.meter = untimed, total, meter
        self.done = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.meter is not None and self.done >= self.untimed:
            self.meter.record(batch["attention_mask"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.done += 1  # after the optimizer step of this batch
        if self.meter is None:
            return
        if self.done == self.untimed:
            self.meter.start_block()
        elif self.done > self.untimed:
            self.meter.step_done()
        if self.done == self.total and self.total > self.untimed:
            self.meter.end_block()


class LightningPath:
    """`mtl`: the real LightningModule and DataLoader under Trainer.fit (no validation,
    checkpointing or logger), one fit per call; the Trainer is made afresh, the module, its
    optimizer and the batch stream carry on."""

    def __init__(self, setup: Setup, plan: Plan):
        if plan.lead_in < 1:
            raise MTLError("mtl: the clock starts at the end of a step, so lead_in must be ≥ 1")
        self.cfg = setup.cfg
        self.module = setup.module(ContinuedModule)
        self.module.total_steps = plan.total
        self.loader = block_loader(setup)

    def run(self, untimed: int, timed: int, meter: Meter | None = None) -> None:
        total = untimed + timed
        self.loader.batch_sampler.size = total
        clock = StepClock(untimed, total, meter)
        cfg = self.cfg
        trainer = L.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=1,
            precision=cfg.trainer.precision,
            max_steps=total,
            max_epochs=-1,
            limit_train_batches=total,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            # manual optimisation (gradient.aggregator): the module clips itself
            gradient_clip_val=None
            if cfg.gradient.aggregator != "none"
            else cfg.trainer.gradient_clip_val,
            accumulate_grad_batches=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            callbacks=[clock],
            default_root_dir=cfg.run.output_dir,
        )
        with warnings.catch_warnings():
            # the benchmark times training steps only: no val loader, and limit_val_batches=0
            # does not stop Lightning's "validation_step but no val_dataloader" warning
            warnings.filterwarnings("ignore", message=".*validation_step.*val_dataloader")
            trainer.fit(self.module, train_dataloaders=self.loader)
        if clock.done != total:
            raise MTLError(f"mtl: Trainer stopped after {clock.done} of {total} steps")


def bare_path(setup: Setup, plan: Plan) -> PlainPath:
    """Our DataLoader and model_step in a plain loop: the difference to `mtl` is Lightning."""
    loader = block_loader(setup)

    def batches(count: int) -> Iterator[dict]:
        loader.batch_sampler.size = count
        return iter(loader)

    return PlainPath(PlainStep(setup, setup.module(), plan.total), batches)


def planned_batches(setup: Setup, count: int) -> list[np.ndarray]:
    """The dataset indices of the first `count` batches our sampler serves (what mtl trains on)."""
    stream = BlockBatches(setup.loader().batch_sampler)
    stream.size = count
    return [np.asarray(batch) for batch in stream]


def bound_path(setup: Setup, plan: Plan) -> PlainPath:
    """Exactly the rows of mtl's batches, stretch by stretch (warm-up, each block's lead-in, each
    block's timed steps) sorted by length and cut into as many batches (exact padding, no
    multiple of 8), collated and on the device beforehand."""
    from mtl.data.sampling import Collator, MultiTaskDataset

    loader = setup.loader()
    dataset: MultiTaskDataset = loader.dataset
    collate = Collator(setup.tokenizer.pad_token_id, loader.collate_fn.task_widths)
    planned = iter(planned_batches(setup, plan.total))
    rng = np.random.default_rng(setup.cfg.seed)
    stream = []
    for size in plan.stretches():
        group = list(itertools.islice(planned, size))
        if not group:
            continue
        rows = np.concatenate(group)
        rows = rows[np.argsort(dataset.lengths[rows], kind="stable")]
        chunks = np.array_split(rows, len(group))
        stream.extend(
            to_device(collate([dataset[int(i)] for i in chunks[k]]), setup.device)
            for k in rng.permutation(len(chunks))
        )
    served = iter(stream)
    step = PlainStep(setup, setup.module(), plan.total)
    return PlainPath(step, lambda count: itertools.islice(served, count))


def method_path(overrides: list[str]) -> Callable[[Setup, Plan], LightningPath]:
    """`mtl` with `overrides` applied to the config (a multi-task method): same rows, batches,
    seeded weights and Trainer, so its ratio to `mtl` is the method's cost."""

    def build(setup: Setup, plan: Plan) -> LightningPath:
        from mtl.config import config_from_dict, to_dict
        from mtl.config.loader import yaml_load
        from mtl.model.aggregation import check_installed

        config = to_dict(setup.cfg)
        for item in overrides:
            key, _, value = item.partition("=")
            *parents, last = key.split(".")
            node = config
            for part in parents:
                node = node[part]
            node[last] = yaml_load(value)
        variant = copy.copy(setup)
        variant.cfg = config_from_dict(config)
        check_installed(variant.cfg)
        return LightningPath(variant, plan)

    return build
