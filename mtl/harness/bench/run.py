"""The run: measure each path, write the JSON, print the table (command line: mtl/cli/benchmark.py)."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from mtl.config import to_dict
from mtl.harness.bench.interleave import measure_training
from mtl.harness.bench.paths import Plan
from mtl.harness.bench.predict_paths import run_predict
from mtl.harness.bench.report import (
    block_ratios,
    check_targets,
    hardware,
    load_average,
    peak_flops,
    ratios,
)
from mtl.harness.bench.setup import (
    BERT_BASE,
    SMOKE_BERT,
    Setup,
    prepare_config,
    random_bert_config,
    smoke_tokenizer_folder,
)
from mtl.io import write_json
from mtl.runtime import load_averages

log = logging.getLogger("mtl.harness.bench")


def benchmark(args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    if args.threads or args.smoke:
        # a tiny model gains nothing from threads; on a CPU that other jobs also load, torch's
        # spinning OpenMP threads can slow every step several-fold (see docs/performance.md)
        torch.set_num_threads(args.threads or 1)
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
            from mtl.backbone import load_tokenizer

            tokenizer = load_tokenizer(cfg.backbone.name)
            sizes = SMOKE_BERT if args.smoke else BERT_BASE
            backbone_config = random_bert_config(tokenizer, sizes)
            model_label = (
                f"random BertConfig {sizes['num_hidden_layers']} layers, hidden "
                f"{sizes['hidden_size']} ({'smoke' if args.smoke else 'bert-base'}), "
                f"tokenizer of {Path(str(cfg.backbone.name)).name}"
            )
        setup = Setup(cfg, backbone_config)
        plan = Plan(args.warmup, args.blocks, args.block_steps)
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
                "adamw_impl": cfg.optim.adamw_impl,
                "freeze_embeddings": cfg.backbone.freeze_embeddings,
                "freeze_layers": cfg.backbone.freeze_layers,
                "sampling": to_dict(cfg.sampling),
                "rows_per_task": {name: len(part) for name, part in setup.parts.items()},
                "data_dir": str(cfg.data_dir),
                "method": "interleaved blocks (mtl/harness/bench/interleave.py): per path a warm-up, "
                "then in each block every path runs a lead-in step and block_steps timed steps, "
                "in an order rotated per block; ratios are medians of per-block ratios",
                "warmup": plan.warmup,
                "blocks": plan.blocks,
                "block_steps": plan.block_steps,
                "lead_in_steps": plan.lead_in,
                "timed_steps_per_path": plan.blocks * plan.block_steps,
                "predict_texts": args.predict_texts,
                "memory": "rise of CUDA max_memory_allocated over the path's build and warm-up"
                if setup.device.type == "cuda"
                else "process peak RSS rise over the path's build and warm-up",
            },
            "schedule": [],
            "out": str(args.out),
            "paths": {},
        }
        if args.profile_step:
            from mtl.harness.bench.step_profile import profile

            log.info("profiling %d steps of ours and of the seed pipeline", args.profile_step)
            result["profile"] = profile(setup, args.profile_step)
            stamp(result, began)
            return result
        probe_module = setup.module()
        result["setup"]["layer_params"] = setup.layer_params(probe_module)
        result["setup"]["total_params"] = sum(p.numel() for p in probe_module.parameters())
        result["setup"]["trainable_params"] = sum(
            p.numel() for p in probe_module.parameters() if p.requires_grad
        )
        del probe_module
        layer_params = result["setup"]["layer_params"]

        def on_block(paths: dict, schedule: list[dict]) -> None:
            for measured in paths.values():
                measured["mfu"] = (
                    6 * layer_params * measured["real_tokens_per_s"] / peak if peak else None
                )
            result["paths"].update(paths)
            result["schedule"] = schedule
            finish(result, began, complete=False)

        training = [name for name in args.paths if name != "predict"]
        if training:
            measure_training(setup, training, plan, log.info, on_block)
        if "predict" in args.paths:
            log.info("path predict: %d texts", args.predict_texts)
            load_before = load_average()
            result["paths"]["predict"] = run_predict(setup, args.predict_texts)
            result["paths"]["predict"]["load_average_1min"] = [load_before, load_average()]
    finish(result, began, complete=True)
    return result


def finish(result: dict, began: float, complete: bool) -> None:
    """Ratios, targets and timing from the paths measured so far; writes --out each time, so a
    run stopped part-way (time limit, Ctrl-C) still leaves the paths it finished."""
    result["complete"] = complete
    result["ratios"] = ratios(result["paths"])
    result["ratio_spread"] = block_ratios(result["paths"])
    result["targets"] = check_targets(result)
    stamp(result, began)


def stamp(result: dict, began: float) -> None:
    """The end-of-run load average and wall time, then the JSON at --out."""
    result["hardware"]["load_average_end"] = load_averages()
    result["wall_seconds"] = round(time.perf_counter() - began, 1)
    write_json(result["out"], result)
