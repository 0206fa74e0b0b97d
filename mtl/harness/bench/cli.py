"""The command line and the run: parse, measure each path, write the JSON, print the table."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from mtl.config import DEFAULT_CONFIG, to_dict
from mtl.errors import MTLError
from mtl.harness.bench.interleave import measure_training
from mtl.harness.bench.paths import Plan
from mtl.harness.bench.predict_paths import run_predict
from mtl.harness.bench.report import (
    ALL_PATHS,
    block_ratios,
    check_targets,
    hardware,
    load_average,
    peak_flops,
    ratios,
    table,
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
from mtl.runtime import load_averages, setup_logging

log = logging.getLogger("mtl.harness.bench")


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
    parser.add_argument(
        "--blocks",
        type=int,
        default=None,
        help="timed blocks; the paths take turns in each, in an order rotated per block (8)",
    )
    parser.add_argument(
        "--block-steps",
        type=int,
        default=None,
        help="timed steps per path per block, after one untimed lead-in step (6)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per path before the blocks (5)"
    )
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--predict-texts", type=int, default=None, help="texts for the predict path (512)"
    )
    parser.add_argument(
        "--paths",
        default=",".join(ALL_PATHS),
        help=f"comma-separated subset of {','.join(ALL_PATHS)}",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own, the core count; --smoke: 1)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the accelerator's peak TFLOP/s for MFU (default: table of bf16 dense peaks)",
    )
    parser.add_argument(
        "--serve",
        default=None,
        metavar="RUN",
        help="instead: a trained run's ONNX export (fp32, int8) vs its PyTorch Predictor, "
        "speed and parity (mtl/harness/bench/serve_paths.py)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="--serve: where to look for the val files"
    )
    parser.add_argument("--val-rows", type=int, default=2000, help="--serve: rows per val file")
    parser.add_argument("--repeats", type=int, default=3, help="--serve: timed passes per backend")
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.steps is not None:
        parser.error(
            "--steps is gone: the paths are timed in interleaved blocks, "
            "--blocks × --block-steps timed steps per path (mtl/harness/bench/interleave.py)"
        )
    defaults = (
        {"blocks": 4, "block_steps": 2, "warmup": 2, "predict_texts": 32, "rows_per_task": 48}
        if args.smoke
        else {"blocks": 8, "block_steps": 6, "warmup": 5, "predict_texts": 512}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in args.paths if p not in ALL_PATHS]
    if unknown:
        parser.error(f"--paths: unknown {unknown}; choose from {', '.join(ALL_PATHS)}")
    if min(args.blocks, args.block_steps, args.warmup) < 1:
        parser.error("--blocks, --block-steps and --warmup must be at least 1")
    return args


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
            from mtl.model.network import load_tokenizer

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
    result["hardware"]["load_average_end"] = load_averages()
    result["wall_seconds"] = round(time.perf_counter() - began, 1)
    write_json(result["out"], result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(strict=True)
    if args.serve:
        from mtl.harness.bench.serve_paths import serve_benchmark

        try:
            serve_benchmark(args)
        except MTLError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        result = benchmark(args)
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    hw = result["hardware"]
    where = hw["gpu"] or f"{hw['cpu_model']}, {hw['usable_cores']} cores"
    print(f"\n{result['setup']['model']} | batch {result['setup']['batch_size']} | {where}")
    print(table(result))
    print(f"\nwrote {out} ({result['wall_seconds']} s)")
    return 0
