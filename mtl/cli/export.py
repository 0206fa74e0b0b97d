"""`scripts/export.py`: export a trained run to ONNX (mtl/inference/export.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtl.errors import MTLError
from mtl.inference.export import EXPORTERS, MANIFEST_FILE, QUANTIZE, export_run
from mtl.inference.int8_check import MIN_AGREEMENT, summary
from mtl.runtime import setup_logging


def main(argv: list[str] | None = None) -> int:
    """`scripts/export.py RUN --format onnx [--quantize int8] [--out DIR] [--overwrite]
    [--min-int8-agreement SHARE] [--force]`."""
    parser = argparse.ArgumentParser(
        description="Export a trained run (every finished fold, its blend, thresholds and "
        "tokenizer) to one folder of ONNX models.",
        epilog="example: export.py checkpoints/default --format onnx --quantize int8",
    )
    parser.add_argument("run_dir", type=Path, help="run folder, checkpoints/<run>")
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--quantize", choices=QUANTIZE, default=None, help="also write int8 models")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: RUN/export. Must be new, empty or an earlier export, which is replaced "
        "only once the new one passed its checks",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out that is not an mtl export (never a run folder)",
    )
    parser.add_argument(
        "--min-int8-agreement",
        type=float,
        default=MIN_AGREEMENT,
        metavar="SHARE",
        help="with --quantize int8: refuse unless int8 and fp32 agree on this share of each "
        f"task's label decisions on the run's val texts (default {MIN_AGREEMENT})",
    )
    parser.add_argument(
        "--force", action="store_true", help="export int8 even below --min-int8-agreement"
    )
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript")
    parser.add_argument(
        "--no-fuse",
        action="store_true",
        help="trace with the model's own attention and fuse nothing (slower; for comparisons)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        out = export_run(
            args.run_dir,
            args.out,
            quantize=args.quantize,
            exporter=args.exporter,
            fuse=not args.no_fuse,
            overwrite=args.overwrite,
            min_int8_agreement=args.min_int8_agreement,
            force=args.force,
        )
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    for name, entry in manifest["files"].items():
        if name.endswith(".onnx"):
            print(f"{out / name}  {entry['bytes'] / 2**20:.1f} MiB")
    for model, check in manifest["parity_on_probe_texts"].items():
        print(
            f"{model}: max abs probability difference vs PyTorch {check['max_abs_prob_diff']:.2e}, "
            f"label agreement {check['label_agreement']:.3f} (probe texts)"
        )
    if "int8_agreement" in manifest:
        print(summary(manifest["int8_agreement"]))
    print(f"wrote {out}")
    return 0
