"""Throughput benchmark: our training path against the seed notebook's pipeline, in one run.

    python scripts/benchmark.py --out bench.json                  # configs/default.yaml, bundled sample
    python scripts/benchmark.py data_dir=../shared/data --rows-per-task 1000 --out docs/bench_cpu.json
    python scripts/benchmark.py --smoke --out /tmp/bench.json     # tiny random BERT, seconds
    python scripts/benchmark.py --bert-base --out bench_gpu.json  # GPU: bf16, bert-base sized, MFU
    python scripts/benchmark.py --paths mtl,bare_pytorch --blocks 12 --block-steps 5 --out o.json

Every path trains the same architecture (fresh, identically seeded weights) on the same rows with
the same batch size, optimizer (AdamW groups of mtl/model/optim.py), scheduler, gradient clipping and
loss (`MultiTaskModule.model_step`, normalised by expected rows alike). Each path runs `--warmup`
untimed steps on its own; then the paths take turns in `--blocks` blocks, in an order rotated
per block (A B C D, B C D A, ...), each turn one untimed lead-in step and `--block-steps` timed
steps, so run order and drift cancel. A ratio is the median over blocks of the two paths'
per-block ratio, with its min, max and quartiles (`ratio_spread`). The method, and how `mtl`
keeps one module and optimizer across a Trainer.fit per block: mtl/harness/bench/interleave.py.

  mtl           ours: MultiTaskModule + make_loader (length-grouped sampler, dynamic padding)
                under a real Lightning Trainer.fit per block (no validation, checkpointing or
                logger)
  bare_pytorch  the same DataLoader, batches and model_step in a plain PyTorch loop: prices
                Lightning
  seed_style    BASELINE, the seed notebook's pipeline: a Dataset that tokenizes one text per
                __getitem__ with padding='max_length', a shuffled ConcatDataset of the tasks,
                DataLoader with default collate, plain PyTorch loop
  bound         the bare step on batches already in memory as tensors, holding the rows `mtl`
                and `bare_pytorch` train on in each block, sorted by length (near-zero padding):
                the ceiling
  predict       our batched, length-sorted, dynamically padded no-grad inference
                (mtl.inference.predictor.Predictor.fold_probabilities) vs a naive
                one-text-at-a-time loop (both tokenize the raw texts), texts/s

A timed step spans fetching the batch, moving it to the device and the optimizer step (the clock
reads after a device synchronise at block ends). Peak memory, over each path's build and warm-up
(the paths then stay alive side by side): the rise of CUDA `max_memory_allocated`; on CPU the
rise of the process' peak RSS (VmHWM in /proc/self/status, reset per path by writing 5 to
/proc/self/clear_refs); `resource.getrusage` ru_maxrss (never reset) where /proc cannot be reset.

Modules: run (the run, the JSON; the command line is mtl/cli/benchmark.py), setup (config,
backbone, rows, the plain step), meter (per-block clock, token counts, peak memory), paths (mtl,
bare_pytorch, bound, the block plan), seed_style (the BASELINE), interleave (warm-ups, rotated
blocks), predict_paths (predict), report (hardware, per-block ratios, targets, the table).
"""
