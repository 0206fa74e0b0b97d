"""Throughput benchmark: our training path against the seed notebook's pipeline, in one run.

    python scripts/benchmark.py --out bench.json                  # configs/default.yaml, bundled sample
    python scripts/benchmark.py data_dir=../shared/data --rows-per-task 1000 --out docs/bench_cpu.json
    python scripts/benchmark.py --smoke --out /tmp/bench.json     # tiny random BERT, seconds
    python scripts/benchmark.py --bert-base --out bench_gpu.json  # GPU: bf16, bert-base sized, MFU

Every path trains the same architecture (fresh, identically seeded weights) on the same rows with
the same batch size, optimizer (AdamW groups of mtl/optim.py), scheduler, gradient clipping and
loss (`MultiTaskModule.model_step`); each runs `--warmup` steps, then `--steps` timed steps:

  mtl           ours: MultiTaskModule + make_loader (length-grouped sampler, dynamic padding)
                under a real Lightning Trainer.fit (no validation, checkpointing or logger)
  bare_pytorch  the same DataLoader and model_step in a plain PyTorch loop: prices Lightning
  seed_style    BASELINE, the seed notebook's pipeline: a Dataset that tokenizes one text per
                __getitem__ with padding='max_length', a shuffled ConcatDataset of the tasks,
                DataLoader with default collate, plain PyTorch loop
  bound         the bare step on batches already in memory as tensors, holding the rows `mtl`
                and `bare_pytorch` train on, sorted by length (near-zero padding): the ceiling
  predict       our batched, length-sorted, dynamically padded no-grad inference vs a naive
                one-text-at-a-time loop (both tokenize the raw texts), texts/s

A timed step spans fetching the batch, moving it to the device and the optimizer step (the clock
reads after a device synchronise). Peak memory: CUDA `max_memory_allocated`; on CPU the process'
peak RSS (VmHWM in /proc/self/status, reset per path by writing 5 to /proc/self/clear_refs),
reported as the rise over the RSS at the path's start; `resource.getrusage` ru_maxrss (never
reset) where /proc cannot be reset.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from box import Box

from mtl.config import DEFAULT_CONFIG, load_config, to_dict
from mtl.errors import MTLError

log = logging.getLogger("mtl.benchmark")

TRAIN_PATHS = ("mtl", "bare_pytorch", "seed_style", "bound")
ALL_PATHS = TRAIN_PATHS + ("predict",)

# Dense bf16 tensor-core peaks (no sparsity), by the substring of torch.cuda.get_device_name.
# First match wins, so the specific names come first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),  # same compute as H100 SXM
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)

TARGETS = {
    "mtl_vs_seed_style": (">=", 4.5),
    "mtl_vs_bound": (">=", 0.9),
    "lightning_overhead": ("<=", 0.05),
    "mtl_padded_token_share": ("<=", 0.10),
    "predict_vs_naive": (">=", 3.0),
}

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


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Training and inference throughput: ours vs the seed pipeline, in one run.",
        epilog="Overrides: key.sub=value, e.g. data_dir=../shared/data data.batch_size=32",
    )
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    parser.add_argument("--out", required=True, help="write the results JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny random BERT, a few steps")
    parser.add_argument(
        "--bert-base",
        action="store_true",
        help="random bert-base sized encoder (12 layers, hidden 768) at max_length 128, MFU on GPU",
    )
    parser.add_argument(
        "--rows-per-task",
        type=int,
        default=None,
        help="a random sample of N training rows per task (default: every row of the config)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per path (50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (5)")
    parser.add_argument(
        "--predict-texts", type=int, default=None, help="texts for the predict path (512)"
    )
    parser.add_argument(
        "--paths",
        default=",".join(ALL_PATHS),
        help=f"comma-separated subset of {','.join(ALL_PATHS)}",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the accelerator's peak TFLOP/s for MFU (default: table of bf16 dense peaks)",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    args = parser.parse_args(argv)
    defaults = (
        {"steps": 4, "warmup": 2, "predict_texts": 32, "rows_per_task": 48}
        if args.smoke
        else {"steps": 50, "warmup": 5, "predict_texts": 512}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in args.paths if p not in ALL_PATHS]
    if unknown:
        parser.error(f"--paths: unknown {unknown}; choose from {', '.join(ALL_PATHS)}")
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    return args


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning",
        "lightning.pytorch",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")


# --- setup: config, backbone, rows ----------------------------------------------------------------


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
    """A WordPiece tokenizer over a small vocabulary, saved like an HF model folder (tests/conftest.py)."""
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


def write_like(frame, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix in (".jsonl", ".json"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")


def prepare_config(args: argparse.Namespace, workdir: Path) -> Box:
    """The run's config: only training files (a row sample of each), caches in `workdir`."""
    from mtl.data import read_table, resolve_path

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
    total = args.warmup + args.steps
    if cfg.optim.scheduler == "onecycle" and cfg.optim.warmup_ratio * total < 2:
        # OneCycleLR divides by zero when its warm-up phase is under 2 steps (mtl/optim.py
        # passes pct_start=max(warmup_ratio, 1/total)): short benchmark runs stretch the warm-up
        cfg.optim.warmup_ratio = min(0.5, 2.0 / total)
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
            target.parent.mkdir(parents=True, exist_ok=True)
            write_like(frame, target)
            spec.train = str(target)
    return cfg


# --- measuring ------------------------------------------------------------------------------------


class Meter:
    """Rows and tokens of the timed steps. Token counts stay on the device until the end (no sync)."""

    def __init__(self):
        self.real: list[torch.Tensor] = []
        self.padded = 0
        self.samples = 0
        self.steps = 0

    def record(self, attention_mask: torch.Tensor) -> None:
        self.real.append(attention_mask.sum())
        self.padded += attention_mask.numel()
        self.samples += attention_mask.shape[0]
        self.steps += 1

    def result(self, seconds: float) -> dict:
        real = int(torch.stack(self.real).sum().item()) if self.real else 0
        return {
            "steps": self.steps,
            "seconds": round(seconds, 4),
            "samples": self.samples,
            "samples_per_s": self.samples / seconds,
            "real_tokens": real,
            "padded_tokens": self.padded,
            "real_tokens_per_s": real / seconds,
            "padded_token_share": 1.0 - real / self.padded if self.padded else 0.0,
            "step_ms": 1000.0 * seconds / max(1, self.steps),
        }


def _rss_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class MemoryProbe:
    """Peak memory of one path (see the module docstring for the method)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = None

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM (/proc/self/status, reset per path)"
        except OSError:
            self.method = "ru_maxrss (process lifetime, not reset)"
        self.base_kb = _rss_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        peak = _rss_kb("VmHWM") if self.method.startswith("VmHWM") else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.result = {
            "peak_rss_mb": peak / 1024,
            "peak_rss_delta_mb": (peak - self.base_kb) / 1024,
            "rss_method": self.method,
        }
        if self.device.type == "cuda":
            self.result["peak_cuda_allocated_mb"] = (
                torch.cuda.max_memory_allocated(self.device) / 2**20
            )
        return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def autocast(device: torch.device, precision: str):
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


# --- the model ------------------------------------------------------------------------------------


class Setup:
    """What every path shares: config, tokenizer, rows, task metadata, device."""

    def __init__(self, cfg: Box, backbone_config: dict | None):
        import lightning as L

        from mtl.data import load_tasks
        from mtl.model import load_tokenizer

        self.cfg = cfg
        self.backbone_config = backbone_config
        self.tokenizer = load_tokenizer(cfg.backbone.name)
        data, self.metas = load_tasks(cfg, self.tokenizer)
        self.parts = {name: data[name]["train"] for name in cfg.tasks}
        self.device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
        self.L = L

    def module(self):
        """A fresh MultiTaskModule, seeded the same way every time."""
        from mtl.module import MultiTaskModule

        self.L.seed_everything(self.cfg.seed, verbose=False)
        module = MultiTaskModule(
            to_dict(self.cfg),
            {name: meta.to_dict() for name, meta in self.metas.items()},
            backbone_config=self.backbone_config,
        )
        return module

    def loader(self):
        from mtl.datamodule import make_collator, make_loader

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
        from mtl.optim import build_optimizer, build_scheduler

        self.cfg = setup.cfg
        self.device = setup.device
        self.module = module.to(self.device).train()
        module.setup("fit")  # torch.compile when trainer.compile, like the Lightning path
        self.optimizer = build_optimizer(module.model, module.weighting, self.cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, total_steps)
        precision = str(self.cfg.trainer.precision)
        self.precision = precision
        self.scaler = torch.amp.GradScaler(self.device.type) if precision.startswith("16") else None
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]

    def __call__(self, batch: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            total, _ = self.module.model_step(batch, "train")
        clip = self.cfg.trainer.gradient_clip_val
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
            if clip:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.optimizer.step()
        self.scheduler.step()


def timed_loop(step: PlainStep, batches: Iterator[dict], warmup: int, steps: int) -> dict:
    """Warm-up steps, then `steps` timed ones; each step includes fetching its batch."""
    meter = Meter()
    device = step.device
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = to_device(next(batches), device)
        if i >= warmup:
            meter.record(batch["attention_mask"])
        step(batch)
    synchronize(device)
    return meter.result(time.perf_counter() - start)


def epochs_of(loader) -> Iterator[dict]:
    """Our loader forever, advancing the sampler's epoch like Lightning does."""
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


# --- the paths ------------------------------------------------------------------------------------


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


def run_seed_style(setup: Setup, warmup: int, steps: int) -> dict:
    step = PlainStep(setup, setup.module(), warmup + steps)
    return timed_loop(step, seed_style_batches(setup), warmup, steps)


def predict_texts(setup: Setup, count: int) -> list[str]:
    texts = [t for part in setup.parts.values() for t in part.texts]
    order = np.random.default_rng(setup.cfg.seed).permutation(len(texts))
    return [texts[i] for i in order[:count]]


def padded_tokens(lengths: np.ndarray, order: np.ndarray, batch_size: int, multiple: int) -> int:
    """Tokens fed to the model when rows go in `order`, each batch padded to its longest row."""
    total = 0
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        total += len(index) * (-(-int(lengths[index].max()) // multiple) * multiple)
    return total


def predict_batched(model, metas, tokenizer, texts, *, batch_size, max_length, device, precision):
    """Batched inference (used when mtl.predict.Predictor is not there): one tokenizer call, rows
    sorted by length, each batch padded to its longest row, inference mode. {task: (N, C) probs}."""
    from mtl.sampling import Collator

    ids = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    ids = [np.asarray(x, dtype=np.int64) for x in ids]
    order = np.argsort([len(x) for x in ids], kind="stable")
    multiple = None if str(precision) in ("32", "32-true") else 8
    collate = Collator(tokenizer.pad_token_id, {}, pad_to_multiple_of=multiple)
    out = {name: np.zeros((len(ids), meta.num_outputs), np.float32) for name, meta in metas.items()}
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, len(ids), batch_size):
            index = order[start : start + batch_size]
            batch = collate([(0, ids[i], None, int(i)) for i in index])
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            for name, meta in metas.items():
                out[name][index] = meta.probabilities(logits[name]).cpu().numpy()
    return out


def predict_naive(model, metas, tokenizer, texts, *, max_length, device, precision):
    """The naive loop: tokenize and run one text at a time. {task: (N, C) probs}."""
    rows: dict[str, list] = {name: [] for name in metas}
    with torch.no_grad(), autocast(device, precision):
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(enc["input_ids"].to(device), enc["attention_mask"].to(device))
            for name, meta in metas.items():
                rows[name].append(meta.probabilities(logits[name]).cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in rows.items()}


def batched_predictor(setup: Setup, model):
    """Ours: mtl.predict.Predictor over the in-memory model when it is importable, else the
    length-sorted loop above. Returns (predict(texts) -> {task: probs}, label, row order, pad multiple)."""
    cfg = setup.cfg
    precision = str(cfg.trainer.precision)
    try:
        from mtl.predict import Predictor

        predictor = Predictor(
            [model],
            {name: meta.to_dict() for name, meta in setup.metas.items()},
            cfg,
            setup.tokenizer,
            device=setup.device,
            batch_size=cfg.data.eval_batch_size,
            precision=precision,
        )
        return (
            lambda texts: predictor.fold_probabilities(texts)[0],
            "mtl.predict.Predictor.fold_probabilities",
            "longest first",
            1,
        )
    except (ImportError, TypeError, MTLError) as err:
        log.info("predict: mtl.predict.Predictor not usable (%s); using predict_batched", err)

    def run(texts):
        return predict_batched(
            model,
            setup.metas,
            setup.tokenizer,
            texts,
            batch_size=cfg.data.eval_batch_size,
            max_length=cfg.data.max_length,
            device=setup.device,
            precision=precision,
        )

    multiple = 1 if precision in ("32", "32-true") else 8
    return run, "mtl.benchmark.predict_batched", "shortest first", multiple


def run_predict(setup: Setup, count: int) -> dict:
    model = setup.module().model.to(setup.device).eval()
    texts = predict_texts(setup, count)
    ours, implementation, direction, multiple = batched_predictor(setup, model)
    naive_kwargs = dict(
        max_length=setup.cfg.data.max_length,
        device=setup.device,
        precision=str(setup.cfg.trainer.precision),
    )
    lengths = np.array(
        [
            len(x)
            for x in setup.tokenizer(texts, truncation=True, max_length=setup.cfg.data.max_length)[
                "input_ids"
            ]
        ]
    )
    batch_size = setup.cfg.data.eval_batch_size
    order = np.argsort(-lengths if direction == "longest first" else lengths, kind="stable")
    real, padded = int(lengths.sum()), padded_tokens(lengths, order, batch_size, multiple)
    ours(texts[: 2 * batch_size])  # warm-up
    predict_naive(model, setup.metas, setup.tokenizer, texts[:8], **naive_kwargs)
    results = {"implementation": implementation}
    for kind in ("batched", "naive"):
        with MemoryProbe(setup.device) as probe:
            synchronize(setup.device)
            start = time.perf_counter()
            if kind == "batched":
                probs = ours(texts)
            else:
                reference = predict_naive(
                    model, setup.metas, setup.tokenizer, texts, **naive_kwargs
                )
            synchronize(setup.device)
            seconds = time.perf_counter() - start
        results[kind] = {
            "texts": len(texts),
            "seconds": round(seconds, 4),
            "texts_per_s": len(texts) / seconds,
            "real_tokens_per_s": real / seconds,
            "padded_token_share": 1.0 - real / padded if kind == "batched" else 0.0,
            "batch_size": batch_size if kind == "batched" else 1,
            **probe.result,
        }
    results["max_abs_prob_diff"] = max(
        float(np.abs(np.asarray(probs[name]) - reference[name]).max()) for name in reference
    )
    return results


# --- report ---------------------------------------------------------------------------------------


def load_average() -> float | None:
    """The 1-minute load average: other processes on the machine compete for its cores."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device, peak: float | None, peak_source: str | None) -> dict:
    import lightning
    import transformers

    info = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    return info


def peak_flops(device: torch.device, precision: str, override_tflops: float | None):
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "CPU: MFU not reported"
    if not str(precision).startswith("bf16"):
        return None, f"no peak tabulated for precision {precision}; pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS:
        if key in name:
            return value, f"{key} bf16 dense {value / 1e12:.0f} TFLOP/s"
    return None, f"unknown GPU '{name}'; pass --peak-tflops"


def ratios(paths: dict) -> dict:
    def speed(name):
        return (paths.get(name) or {}).get("samples_per_s")

    def div(a, b):
        return a / b if a is not None and b else None

    mtl, bare = speed("mtl"), speed("bare_pytorch")
    predict = paths.get("predict") or {}
    return {
        "mtl_vs_seed_style": div(mtl, speed("seed_style")),
        "mtl_vs_bound": div(mtl, speed("bound")),
        "bare_vs_bound": div(bare, speed("bound")),
        "lightning_overhead": None if mtl is None or not bare else 1.0 - mtl / bare,
        "predict_vs_naive": div(
            (predict.get("batched") or {}).get("texts_per_s"),
            (predict.get("naive") or {}).get("texts_per_s"),
        ),
    }


def check_targets(result: dict) -> dict:
    values = dict(result["ratios"])
    values["mtl_padded_token_share"] = (result["paths"].get("mtl") or {}).get("padded_token_share")
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = values.get(key)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[key] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(result: dict) -> str:
    cuda = result["hardware"]["device"].startswith("cuda")
    memory_key = "peak_cuda_allocated_mb" if cuda else "peak_rss_delta_mb"
    head = (
        "| path | samples/s | real tokens/s | padded share | ms/step | "
        + ("peak CUDA MiB" if cuda else "peak RSS Δ MiB")
        + " | MFU |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for name in TRAIN_PATHS:
        r = result["paths"].get(name)
        if not r:
            continue
        lines.append(
            f"| {name} | {r['samples_per_s']:.1f} | {r['real_tokens_per_s']:.0f} | "
            f"{r['padded_token_share']:.3f} | {r['step_ms']:.0f} | {fmt(r.get(memory_key), '.0f')} | "
            f"{fmt(r.get('mfu'), '.3f')} |"
        )
    predict = result["paths"].get("predict")
    if predict:
        for kind in ("batched", "naive"):
            r = predict[kind]
            lines.append(
                f"| predict_{kind} (texts/s) | {r['texts_per_s']:.1f} | {r['real_tokens_per_s']:.0f} | "
                f"{r['padded_token_share']:.3f} | — | {fmt(r.get(memory_key), '.0f')} | — |"
            )
    lines.append("")
    for key, t in result["targets"].items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"{key}: {fmt(t['value'], '.3f')} (target {t['target']}) {verdict}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------

RUNNERS = {
    "mtl": run_mtl,
    "bare_pytorch": run_bare,
    "seed_style": run_seed_style,
    "bound": run_bound,
}


def benchmark(args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    if args.smoke:
        torch.set_num_threads(1)  # a tiny model gains nothing from threads, and loses under load
    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as tmp:
        workdir = Path(tmp)
        if args.smoke:
            override_names = {item.partition("=")[0] for item in args.overrides}
            if "backbone.name" not in override_names:
                args.overrides = [
                    f"backbone.name={smoke_tokenizer_folder(workdir / 'smoke_tokenizer')}"
                ] + list(args.overrides)
        cfg = prepare_config(args, workdir)
        backbone_config = None
        model_label = cfg.backbone.name
        if args.bert_base or args.smoke:
            from mtl.model import load_tokenizer

            tokenizer = load_tokenizer(cfg.backbone.name)
            sizes = SMOKE_BERT if args.smoke else BERT_BASE
            backbone_config = random_bert_config(tokenizer, sizes)
            model_label = (
                f"random BertConfig {sizes['num_hidden_layers']} layers, hidden "
                f"{sizes['hidden_size']} ({'smoke' if args.smoke else 'bert-base'}), "
                f"tokenizer of {Path(str(cfg.backbone.name)).name}"
            )
        setup = Setup(cfg, backbone_config)
        peak, peak_source = peak_flops(setup.device, cfg.trainer.precision, args.peak_tflops)
        result = {
            "command": "python scripts/benchmark.py " + " ".join(sys.argv[1:]),
            "hardware": hardware(setup.device, peak, peak_source),
            "setup": {
                "model": model_label,
                "bert_base": bool(args.bert_base),
                "smoke": bool(args.smoke),
                "batch_size": cfg.data.batch_size,
                "eval_batch_size": cfg.data.eval_batch_size,
                "max_length": cfg.data.max_length,
                "precision": str(cfg.trainer.precision),
                "num_workers": cfg.data.num_workers,
                "sampling": to_dict(cfg.sampling),
                "rows_per_task": {name: len(part) for name, part in setup.parts.items()},
                "data_dir": str(cfg.data_dir),
                "warmup": args.warmup,
                "steps": args.steps,
                "predict_texts": args.predict_texts,
                "memory": "CUDA max_memory_allocated"
                if setup.device.type == "cuda"
                else "process peak RSS rise over the path's starting RSS",
            },
            "paths": {},
        }
        probe_module = setup.module()
        result["setup"]["layer_params"] = setup.layer_params(probe_module)
        result["setup"]["total_params"] = sum(p.numel() for p in probe_module.parameters())
        del probe_module
        for name in args.paths:
            if name == "predict":
                continue
            log.info("path %s: %d warm-up + %d timed steps", name, args.warmup, args.steps)
            path_began = time.perf_counter()
            load_before = load_average()
            with MemoryProbe(setup.device) as probe:
                measured = RUNNERS[name](setup, args.warmup, args.steps)
            measured.update(probe.result)
            measured["load_average_1min"] = [load_before, load_average()]  # before, after
            measured["mfu"] = (
                6 * result["setup"]["layer_params"] * measured["real_tokens_per_s"] / peak
                if peak
                else None
            )
            result["paths"][name] = measured
            log.info(
                "path %s: %.1f samples/s (%.1f s with setup)",
                name,
                measured["samples_per_s"],
                time.perf_counter() - path_began,
            )
            gc.collect()
        if "predict" in args.paths:
            log.info("path predict: %d texts", args.predict_texts)
            load_before = load_average()
            result["paths"]["predict"] = run_predict(setup, args.predict_texts)
            result["paths"]["predict"]["load_average_1min"] = [load_before, load_average()]
    result["ratios"] = ratios(result["paths"])
    result["targets"] = check_targets(result)
    result["hardware"]["load_average_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    result["wall_seconds"] = round(time.perf_counter() - began, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    try:
        result = benchmark(args)
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    hw = result["hardware"]
    where = hw["gpu"] or f"{hw['cpu_model']}, {hw['usable_cores']} cores"
    print(f"\n{result['setup']['model']} | batch {result['setup']['batch_size']} | {where}")
    print(table(result))
    print(f"\nwrote {out} ({result['wall_seconds']} s)")
    return 0


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
