"""Setup: the run's config and rows, the (random) backbone, what every path shares, the plain step."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from box import Box

from mtl.config import DEFAULT_CONFIG, load_config, to_dict
from mtl.harness.bench.meter import autocast

BERT_BASE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)
SMOKE_BERT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=512,
)


def smoke_vocabulary() -> list[str]:
    """Special tokens, letters, word pieces, digits, punctuation and a few common words."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    words = "the a and to of i you is it this that was in for not movie user".split()
    tokens = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + words
        + letters
        + ["##" + c for c in letters + digits]
        + digits
        + list(".,!?'\"-:;()@#&*/")
    )
    return list(dict.fromkeys(tokens))  # ids must be 0..n-1: no duplicates


def smoke_tokenizer_folder(folder: Path) -> Path:
    """A WordPiece tokenizer over a small vocabulary, saved like an HF model folder (tests/conftest.py, tests/helpers.py)."""
    from transformers import BertTokenizer

    vocab = smoke_vocabulary()
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    return folder


def random_bert_config(tokenizer, sizes: dict) -> dict:
    """A BertConfig (as the dict MultiTaskModule rebuilds encoders from): random weights, no download."""
    from transformers import BertConfig

    vocab_size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    config = BertConfig(vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id, **sizes)
    return json.loads(config.to_json_string(use_diff=False))


def prepare_config(args: argparse.Namespace, workdir: Path) -> Box:
    """The run's config: only training files (a row sample of each), caches in `workdir`."""
    from mtl.data.files import read_table, resolve_path
    from mtl.inference.tables import write_frames
    from mtl.io import FILE_FORMATS, atomic_write

    cfg = load_config(args.config or DEFAULT_CONFIG, list(args.overrides))
    if args.bert_base:
        cfg.data.max_length = 128
    explicit = {item.partition("=")[0] for item in args.overrides}
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda"):
        cfg.trainer.accelerator = "gpu"
        if "trainer.precision" not in explicit:
            cfg.trainer.precision = "bf16-mixed"
    else:
        cfg.trainer.accelerator = "cpu"
    cfg.trainer.devices = 1
    cfg.trainer.accumulate_grad_batches = 1
    cfg.data.cache_dir = str(workdir / "token_cache")
    cfg.run.output_dir = str(workdir / "runs")
    rng = np.random.default_rng(cfg.seed)
    for name, spec in cfg.tasks.items():
        spec.val = None  # training throughput only: no validation, no test files needed
        spec.test = None
        if args.rows_per_task:
            source = resolve_path(cfg, spec.train)
            frame = read_table(source, f"tasks.{name}.train")
            if len(frame) > args.rows_per_task:
                keep = np.sort(rng.choice(len(frame), size=args.rows_per_task, replace=False))
                frame = frame.iloc[keep].reset_index(drop=True)
            target = workdir / "rows" / f"{name}{source.suffix}"
            fmt = FILE_FORMATS[source.suffix.lower()]  # read_table read it: a known format
            atomic_write(target, lambda tmp, f=frame, fmt=fmt: write_frames(tmp, fmt, [f]))
            spec.train = str(target)
    return cfg


class Setup:
    """What every path shares: config, tokenizer, rows, task metadata, device."""

    def __init__(self, cfg: Box, backbone_config: dict | None):
        import lightning as L

        from mtl.backbone import load_tokenizer
        from mtl.data.load import load_tasks

        self.cfg = cfg
        self.backbone_config = backbone_config
        self.tokenizer = load_tokenizer(cfg.backbone.name)
        data, self.metas = load_tasks(cfg, self.tokenizer)
        self.parts = {name: data[name]["train"] for name in cfg.tasks}
        self.device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
        self.L = L

    def module(self, cls=None):
        """A fresh MultiTaskModule (or subclass `cls`), seeded the same way every time."""
        from mtl.model.module import MultiTaskModule

        self.L.seed_everything(self.cfg.seed, verbose=False)
        module = (cls or MultiTaskModule)(
            to_dict(self.cfg),
            {name: meta.to_dict() for name, meta in self.metas.items()},
            backbone_config=self.backbone_config,
        )
        return module

    def loader(self):
        from mtl.data.datamodule import make_collator, make_loader

        collator = make_collator(self.cfg, self.metas, self.tokenizer.pad_token_id)
        return make_loader(self.cfg, self.parts, collator, train=True)

    def layer_params(self, module) -> int:
        """Parameters applied once per token: the encoder's layers (not embeddings, pooler, heads)."""
        return sum(
            p.numel()
            for name, p in module.model.encoder.named_parameters()
            if "embeddings" not in name and "pooler" not in name
        )


class PlainStep:
    """forward → loss (model_step) → backward → clip → AdamW → scheduler, outside Lightning."""

    def __init__(self, setup: Setup, module, total_steps: int):
        from mtl.model.optim import build_optimizer, build_scheduler

        self.cfg = setup.cfg
        self.device = setup.device
        self.module = module.to(self.device).train()
        module.setup("fit")  # torch.compile when trainer.compile, like the Lightning path
        module.set_expected_rows(setup.loader().dataset)  # what on_train_start does under Lightning
        self.optimizer = build_optimizer(module.model, module.weighting, self.cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, total_steps)
        precision = str(self.cfg.trainer.precision)
        self.precision = precision
        self.scaler = torch.amp.GradScaler(self.device.type) if precision.startswith("16") else None
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]

    def __call__(self, batch: dict, tick: Callable[[], None] | None = None) -> None:
        """One step; `tick()`, when given, marks the end of forward, backward, clip and the
        optimizer update (mtl/harness/bench/step_profile.py times the phases with it)."""
        tick = tick or (lambda: None)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            total, _ = self.module.model_step(batch, "train")
        tick()
        (total if self.scaler is None else self.scaler.scale(total)).backward()
        tick()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.trainer.gradient_clip_val
        if clip:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        tick()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.module.weighting.project()  # as MultiTaskModule.optimizer_step does
        self.scheduler.step()
        tick()
