"""`scripts/predict.py`: print predictions for texts, or write them for a file (mtl/inference/).

python scripts/predict.py checkpoints/default --text "I love this" --text "you idiot"
python scripts/predict.py checkpoints/default --input texts.csv --output preds.csv
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mtl.errors import MTLError
from mtl.inference.checks import as_texts, refuse_overwriting_input
from mtl.inference.outputs import output_format, write_table
from mtl.inference.predictor import Predictor
from mtl.inference.records import render_json, render_table
from mtl.inference.runs import PRECISIONS
from mtl.inference.tables import DEFAULT_CHUNK_SIZE
from mtl.runtime import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Predict with a trained run (every finished fold, blended) or one checkpoint.",
        epilog=(
            "examples:\n"
            '  predict.py checkpoints/default --text "I love this" --text "you idiot"\n'
            "  predict.py checkpoints/default --input texts.csv --output preds.csv\n"
            "  predict.py --checkpoint checkpoints/default/fold_0/best.ckpt --text hi --format json\n"
            '  predict.py checkpoints/default --backend onnx --text "you idiot"   # after export.py'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", nargs="?", type=Path, help="run folder, checkpoints/<run>")
    parser.add_argument(
        "--checkpoint", type=Path, help="one checkpoint instead of the run's blended folds"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a text to classify (repeat for several)")
    source.add_argument("--input", type=Path, help="CSV, TSV, Parquet or JSON Lines file")
    parser.add_argument("--text-column", default="text", help="text column of --input")
    parser.add_argument(
        "--output", type=Path, help="file to write (csv/tsv/parquet/jsonl); needed with --input"
    )
    parser.add_argument(
        "--prefix",
        default="",
        help="put before every prediction column's name (e.g. pred_: pred_toxicity_label); an "
        "input column with a prediction column's name is refused, never replaced",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table", help="for --text")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:<i> (default: auto)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="default: data.eval_batch_size, at most 16 on a CPU",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="rows per chunk of --input"
    )
    parser.add_argument(
        "--precision", choices=tuple(PRECISIONS), default="32-true", help="autocast for speed"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="onnx: the run's export (scripts/export.py) with ONNX Runtime",
    )
    parser.add_argument(
        "--onnx-model",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="with --backend onnx: which exported models (auto: int8 when exported)",
    )
    args = parser.parse_args(argv)
    if args.run_dir is None and args.checkpoint is None:
        parser.error("give a run folder (checkpoints/<run>) or --checkpoint PATH")
    if args.input is not None and args.output is None:
        parser.error("--input needs --output (the file to write)")
    if args.backend == "onnx" and (args.checkpoint is not None or args.run_dir is None):
        parser.error("--backend onnx needs a run folder with export/ (or an export folder)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(logging.WARNING)
    try:
        # before the models load: a quick, clear refusal
        if args.input is not None:
            refuse_overwriting_input(args.input, args.output)
            texts = None
        else:
            texts = as_texts(args.text, where=lambda i: f"--text number {i + 1}")
            if args.output is not None:
                output_format(args.output)
        if args.backend == "onnx":
            from mtl.inference.onnx_predict import OnnxPredictor

            predictor = OnnxPredictor.from_export(
                args.run_dir, model=args.onnx_model, device=args.device, batch_size=args.batch_size
            )
        elif args.checkpoint is not None:
            predictor = Predictor.from_checkpoint(
                args.checkpoint,
                run_dir=args.run_dir,
                device=args.device,
                batch_size=args.batch_size,
                precision=args.precision,
            )
        else:
            predictor = Predictor.from_run(
                args.run_dir,
                device=args.device,
                batch_size=args.batch_size,
                precision=args.precision,
            )
        if args.input is not None:
            rows = predictor.predict_file(
                args.input,
                args.output,
                args.text_column,
                chunk_size=args.chunk_size,
                progress=False if args.no_progress else None,
                prefix=args.prefix,
            )
            print(f"wrote {rows} rows to {args.output}", file=sys.stderr)
            return 0
        probs = predictor.predict_proba(texts)
        if args.output is not None:
            frame = predictor.frame(probs).add_prefix(args.prefix)
            frame.insert(0, "text", texts)
            write_table(args.output, [frame])
            print(f"wrote {len(texts)} rows to {args.output}", file=sys.stderr)
        render = render_json if args.format == "json" else render_table
        sys.stdout.write(render(texts, predictor, probs))
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
