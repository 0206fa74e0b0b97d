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
  predict       our batched, length-sorted, dynamically padded no-grad inference
                (mtl.predict.Predictor.fold_probabilities) vs a naive
                one-text-at-a-time loop (both tokenize the raw texts), texts/s

A timed step spans fetching the batch, moving it to the device and the optimizer step (the clock
reads after a device synchronise). Peak memory: CUDA `max_memory_allocated`; on CPU the process'
peak RSS (VmHWM in /proc/self/status, reset per path by writing 5 to /proc/self/clear_refs),
reported as the rise over the RSS at the path's start; `resource.getrusage` ru_maxrss (never
reset) where /proc cannot be reset.

Modules: cli (command line, the run, the JSON), setup (config, backbone, rows, the plain step),
meter (clocks, token counts, peak memory), paths (mtl, bare_pytorch, bound), seed_style (the
BASELINE), predict_paths (predict), report (hardware, ratios, targets, the table).
"""

from mtl.bench.cli import main

__all__ = ["main"]
