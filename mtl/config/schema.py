"""The config's schema: every key's default, the named choices, the types a default cannot tell,
and the ranges numbers must lie in. The checks that use them: mtl/config/validate.py."""

from __future__ import annotations

from typing import Any

from mtl.data.sampling import SAMPLING_MODES
from mtl.data.tasks import TASK_TYPES
from mtl.model.gradients import AGGREGATORS
from mtl.model.network import HEADS, POOLINGS
from mtl.model.optim import ADAMW_IMPLS, SCHEDULERS
from mtl.model.weighting import WEIGHTINGS
from mtl.portable import CALIBRATION_METHODS
from mtl.run.blend import BLEND_METHODS

DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "run": {"name": "default", "output_dir": "checkpoints"},
    "data_dir": ".",
    "backbone": {
        "name": "minilm",  # the packaged offline all-MiniLM-L6-v2; or any HF id / local path
        "pooling": "cls",
        "dropout": 0.2,
        "head": "linear",
        "head_hidden": 256,
        "gradient_checkpointing": False,
        "attn_implementation": "sdpa",
        "freeze_embeddings": False,  # the word-embedding matrix: out of the optimizer and clipping
        "freeze_layers": 0,  # the embeddings and the lowest N encoder layers: no gradient at all
    },
    "tasks": {},
    "loss_weighting": "equal",  # issue 15: uncertainty lost emotion F1 in every table (docs/RESULTS.md)
    # task_loss_norm: "batch" = each task's loss is the mean over its rows in the batch;
    # "expected" (default, docs/RESULTS.md) = its summed loss / its expected rows per batch
    # (every row weighs the same however many rows of its task a batch holds)
    # famo_lr / famo_decay: the Adam step size and L2 decay γ of FAMO's task logits (the paper's)
    "weighting": {
        "log_var_clamp": 5.0,
        "dwa_temperature": 2.0,
        "task_loss_norm": "expected",
        "famo_lr": 0.025,
        "famo_decay": 0.001,
    },
    # aggregator: how the tasks' gradients on the shared encoder combine (mtl/model/gradients.py);
    # log_every_n_steps: gradient-conflict statistics every N optimizer steps (0 = off)
    "gradient": {"aggregator": "none", "log_every_n_steps": 0},
    "sampling": {"mode": "proportional", "temperature": 2.0, "length_grouping": True},
    "data": {
        "max_length": 128,
        "batch_size": 32,
        "eval_batch_size": 64,
        "num_workers": 0,
        "preprocess": None,
        "on_bad_rows": "error",
        "max_dropped_fraction": 0.1,  # on_bad_rows=drop refuses to drop more of a file
        "val_fraction": 0.1,  # held out of a training file: the selection slice / a missing val set
        "drop_overlap": False,  # drop val / test rows whose text also occurs in training
        "cache_dir": None,
        "max_train_rows": None,  # int: a seeded random subset of each task's training file
        "max_eval_rows": None,  # int: a seeded random subset of each task's val file
    },
    # selection: "best" = the best epoch on selection rows (the fold's rows in k-fold, a held-out
    # data.val_fraction of the training rows with one split); "last" = the last epoch, nothing chosen
    # threshold_bootstrap: resamples of the rows that tune a threshold; a tuned cut is kept only
    # where they say it transfers (mtl/run/threshold_bootstrap.py); 0 = off, every tuned cut kept
    "cv": {
        "n_splits": 1,
        "blend": "mean",
        "folds": None,
        "selection": "best",
        "threshold_bootstrap": 200,
    },
    "optim": {
        "lr_backbone": 2.0e-5,
        "lr_heads": 5.0e-5,
        "lr_log_vars": 1.0e-3,
        "weight_decay": 0.01,
        "layer_lr_decay": 1.0,
        "scheduler": "onecycle",
        "warmup_ratio": 0.1,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "adamw_impl": "auto",  # fused where torch has it for the device, else foreach (mtl/model/optim.py)
    },
    "trainer": {
        "max_epochs": 4,
        "accumulate_grad_batches": 1,
        "gradient_clip_val": 1.0,
        "precision": "32-true",
        "accelerator": "auto",
        "devices": "auto",
        "strategy": "auto",
        "num_nodes": 1,
        "log_every_n_steps": 10,
        "limit_train_batches": None,
        "limit_val_batches": None,
        "deterministic": False,
        "compile": False,
        "enable_progress_bar": True,
        # last.ckpt also mid-epoch, every so many minutes of training (0 = epoch ends only): a
        # killed long epoch (a base-size encoder on a CPU) resumes from there, not from its start
        "checkpoint_every_minutes": 30.0,
    },
    "early_stopping": {"enabled": True, "patience": 3, "min_delta": 0.0},
    # mode "auto": min for a loss, max for every score (mtl/config/names.py::check_monitor)
    "monitor": {"metric": "score", "mode": "auto"},
    # scripts/tune.py's study (docs/tune.md); train.py ignores it. The space's entries are checked
    # by mtl/tune/space.py: every key a real config key, every bound a value that key accepts
    "tune": {"metric": "score", "direction": "maximize", "pruner": "median", "space": {}},
}

TASK_DEFAULTS: dict[str, Any] = {
    "type": "binary",
    "train": None,
    "val": None,
    "test": None,
    "text_column": "text",
    "label_columns": ["label"],
    "classes": None,
    "group_column": None,
    "loss": None,  # the task type's default (mtl.data.tasks): ce, or bce for multilabel
    "gamma": 2.0,
    "class_weights": None,
    "label_smoothing": 0.0,
    "threshold": 0.5,
    # fitted on each fold's own validation rows after training (mtl/calibration.py,
    # docs/calibration.md); changes the blend and results only, never what a fold trains
    "calibration": "vector",
    "weight": 1.0,
    "max_train_rows": None,  # int: this task's own data.max_train_rows
    "encoding": None,  # text encoding of the task's CSV / TSV / JSON Lines files; null = UTF-8
}

# Named choices; where a module implements them, the names come from it.
CHOICES: dict[str, tuple] = {
    "backbone.pooling": POOLINGS,
    "backbone.head": HEADS,
    "loss_weighting": tuple(WEIGHTINGS),
    "sampling.mode": SAMPLING_MODES,
    "data.on_bad_rows": ("error", "drop"),
    "optim.scheduler": SCHEDULERS,
    "optim.adamw_impl": ADAMW_IMPLS,
    "monitor.mode": ("auto", "min", "max"),
    "cv.blend": BLEND_METHODS,
    "cv.selection": ("best", "last"),
    "weighting.task_loss_norm": ("batch", "expected"),
    # what Lightning 2.x's Trainer(precision=...) accepts; checked here, before any work
    "trainer.precision": (
        *("16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true"),
        *(64, 32, 16, "64", "32", "16", "bf16", "transformer-engine", "transformer-engine-float16"),
    ),
    "gradient.aggregator": AGGREGATORS,
    "tune.direction": ("maximize", "minimize"),
    "tune.pruner": ("none", "median", "hyperband"),
    "task.type": tuple(TASK_TYPES),
    "task.calibration": CALIBRATION_METHODS,
    "task.loss": (None, *dict.fromkeys(loss for t in TASK_TYPES.values() for loss in t.losses)),
}

NoneType = type(None)
# Keys whose default does not tell their type (None defaults, several accepted forms).
TYPES: dict[str, tuple] = {
    "data.preprocess": (str, NoneType),
    "data.cache_dir": (str, NoneType),
    "data.max_train_rows": (int, NoneType),
    "data.max_eval_rows": (int, NoneType),
    "cv.folds": (list, int, str, NoneType),
    "trainer.precision": (str, int),
    "trainer.devices": (int, str, list),
    "trainer.limit_train_batches": (int, float, NoneType),
    "trainer.limit_val_batches": (int, float, NoneType),
    "trainer.gradient_clip_val": (float, NoneType),
    "task.train": (str,),
    "task.val": (str, NoneType),
    "task.test": (str, NoneType),
    "task.classes": (list, NoneType),
    "task.group_column": (str, NoneType),
    "task.loss": (str, NoneType),
    "task.class_weights": (str, list, NoneType),
    "task.threshold": (float, str, list),
    "task.calibration": (str, NoneType),  # null: refused with the choices named
    "task.max_train_rows": (int, NoneType),
    "task.encoding": (str, NoneType),
}

# Numeric keys and the range they must lie in: (low, high, low_inclusive, high_inclusive).
# A value outside is a ConfigError naming the key, not a crash (or a silent oddity) mid-training.
INF = float("inf")
# numpy's legacy seeding and Lightning's seed_everything take seeds in [0, 2**32 - 1]
SEED_MAX = 2**32 - 1
# The most any other integer key may be: no real setting comes near it, and a mistyped huge
# number (`cv.n_splits=100000000000000000000`) is refused here rather than overflowing the 32-
# and 64-bit integers numpy, torch and the tokenizers keep such values in, mid-run.
INT_MAX = 2**31 - 1
RANGES: dict[str, tuple] = {
    "seed": (0, SEED_MAX, True, True),
    "backbone.dropout": (0.0, 1.0, True, False),
    "backbone.head_hidden": (1, INF, True, True),
    "backbone.freeze_layers": (0, INF, True, True),
    "optim.lr_backbone": (0.0, INF, True, True),
    "optim.lr_heads": (0.0, INF, True, True),
    "optim.lr_log_vars": (0.0, INF, True, True),
    "optim.weight_decay": (0.0, INF, True, True),
    "optim.layer_lr_decay": (0.0, INF, False, True),
    "optim.warmup_ratio": (0.0, 1.0, True, False),
    "optim.eps": (0.0, INF, False, True),
    "data.max_dropped_fraction": (0.0, 1.0, True, True),
    "data.num_workers": (0, INF, True, True),
    "cv.n_splits": (1, INF, True, True),
    "cv.threshold_bootstrap": (0, 10_000, True, True),
    "trainer.max_epochs": (1, INF, True, True),
    "trainer.accumulate_grad_batches": (1, INF, True, True),
    "trainer.gradient_clip_val": (0.0, INF, True, True),
    "trainer.num_nodes": (1, INF, True, True),
    "trainer.log_every_n_steps": (1, INF, True, True),
    "trainer.checkpoint_every_minutes": (0.0, INF, True, False),
    "trainer.limit_train_batches": (0.0, INF, False, True),
    "trainer.limit_val_batches": (0.0, INF, False, True),
    "early_stopping.patience": (0, INF, True, True),
    "early_stopping.min_delta": (0.0, INF, True, True),
    "weighting.log_var_clamp": (0.0, INF, False, True),
    "weighting.dwa_temperature": (0.0, INF, False, True),
    "weighting.famo_lr": (0.0, INF, False, False),
    "weighting.famo_decay": (0.0, INF, True, False),
    "gradient.log_every_n_steps": (0, INF, True, False),
    "sampling.temperature": (0.0, INF, False, True),
    "task.gamma": (0.0, INF, True, True),
    "task.weight": (0.0, INF, True, True),
}
RANGE_MEANING = {
    "seed": " (the seeds numpy and Lightning's seed_everything accept)",
    "cv.n_splits": " (1 = no k-fold)",
    "cv.threshold_bootstrap": " (bootstrap resamples of a tuned threshold's rows; 0 = off)",
    "trainer.max_epochs": " (at least one epoch of training)",
    "data.max_dropped_fraction": " (the share of a file data.on_bad_rows=drop may drop)",
    "weighting.famo_lr": " (a finite number)",
    "weighting.famo_decay": " (a finite number)",
    "gradient.log_every_n_steps": " (0 = off)",
    "trainer.checkpoint_every_minutes": " (0 = at epoch ends only)",
}
