"""`scripts/benchmark.py`: training and inference throughput, ours vs the seed pipeline (mtl/harness/bench/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtl.config import DEFAULT_CONFIG
from mtl.errors import MTLError
from mtl.harness.bench.report import (
    ALL_PATHS,
    DEFAULT_PATHS,
    table,
)
from mtl.harness.bench.run import benchmark
from mtl.harness.bench.step_profile import profile_table
from mtl.runtime import setup_logging


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
        default=",".join(DEFAULT_PATHS),
        help=f"comma-separated subset of {','.join(ALL_PATHS)} (default: the first "
        f"{len(DEFAULT_PATHS)}; mtl_<method>: the cost of a multi-task method against mtl)",
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
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="--serve: texts per batch for every backend (default: the Predictor's, 16 on a CPU)",
    )
    parser.add_argument(
        "--onnx-ablation",
        action="store_true",
        help="--serve: also time int8 without the export's Attention fusion and with ONNX "
        "Runtime's SkipLayerNormalization fusion (mtl/harness/bench/onnx_ablation.py)",
    )
    parser.add_argument(
        "--profile-step",
        type=int,
        default=None,
        metavar="N",
        help="instead: time each phase of N training steps, ours vs the seed pipeline, and the "
        "ceilings on mtl_vs_seed_style (mtl/harness/bench/step_profile.py)",
    )
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
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.onnx_ablation and not args.serve:
        parser.error("--onnx-ablation goes with --serve RUN")
    if args.profile_step is not None and args.profile_step < 2:
        parser.error("--profile-step needs at least 2 steps")
    if min(args.blocks, args.block_steps, args.warmup) < 1:
        parser.error("--blocks, --block-steps and --warmup must be at least 1")
    return args


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
    if "profile" in result:
        print(profile_table(result["profile"]))
        print(f"\nwrote {out} ({result['wall_seconds']} s)")
        return 0
    hw = result["hardware"]
    where = hw["gpu"] or f"{hw['cpu_model']}, {hw['usable_cores']} cores"
    print(f"\n{result['setup']['model']} | batch {result['setup']['batch_size']} | {where}")
    print(table(result))
    print(f"\nwrote {out} ({result['wall_seconds']} s)")
    return 0
