"""Interleaved timing of the training paths, so that run order and drift cancel out of the ratios.

Timing the paths one after the other mostly measures their order: on a 2-core VM, whichever of
`mtl` and `bare_pytorch` ran second was 13–15% faster (issue 15). So:

1. Every path is built (fresh, identically seeded model; its own optimizer and batch stream)
   and runs `--warmup` untimed steps on its own. Its peak memory is taken over this stretch.
2. Then `--blocks` blocks. In block b the paths take turns in an order rotated by b
   (A B C D, B C D A, C D A B, ...), so over a multiple of len(paths) blocks every path runs
   in every position equally often. In its turn a path runs one untimed lead-in step (which
   absorbs starting the turn: a new `Trainer.fit`, a new pass over the DataLoader, caches the
   other paths evicted), then `--block-steps` timed steps.
3. `mtl` runs each turn as a fresh `Trainer.fit(max_steps=lead-in + block steps)` on the same
   module: its optimizer and LR schedule are created once, for the whole run
   (paths.ContinuedModule), and its batches come from one endless stream of our batch sampler
   (paths.BlockBatches), so every fit continues where the last stopped. `bare_pytorch` draws
   from its own copy of that stream, so in every block `mtl` and `bare_pytorch` train on the
   same batches, and `bound` on the same rows, sorted by length. The timed steps are Lightning's
   steady-state loop: the fit's setup and teardown fall outside the clock.
4. Per path and block: samples/s of the timed steps. A ratio (mtl/bare, mtl/bound, mtl/seed)
   is taken per block, between the two paths' turns in that block, and reported as the median
   over blocks with min, max and quartiles (report.block_ratios); the overhead is
   1 − mtl/bare per block. Per path the JSON also has the median block samples/s and the
   whole-run totals.

Under 16-mixed the GradScaler is the Trainer's, so `mtl` restarts its loss scale every block;
the benchmark uses 32-true on CPU and bf16-mixed (no scaler) on GPU.
"""

from __future__ import annotations

from collections.abc import Callable

from mtl.harness.bench.meter import MemoryProbe, Meter
from mtl.harness.bench.paths import LightningPath, Plan, bare_path, bound_path, method_path
from mtl.harness.bench.report import METHOD_PATHS, load_average
from mtl.harness.bench.seed_style import seed_style_path
from mtl.harness.bench.setup import Setup

BUILDERS = {
    "mtl": LightningPath,
    "bare_pytorch": bare_path,
    "seed_style": seed_style_path,
    "bound": bound_path,
    **{name: method_path(overrides) for name, overrides in METHOD_PATHS.items()},
}


def block_orders(names: list[str], blocks: int) -> list[list[str]]:
    """Block b runs the paths rotated by b: A B C, B C A, C A B, A B C, ..."""
    n = len(names)
    return [names[b % n :] + names[: b % n] for b in range(blocks)]


def measure_training(
    setup: Setup,
    names: list[str],
    plan: Plan,
    log: Callable[..., None],
    on_block: Callable[[dict, list[dict]], None] | None = None,
) -> tuple[dict, list[dict]]:
    """Warm every path up, then time them in rotated blocks. Returns the per-path results and
    the schedule (each block's order and load average); `on_block` gets both after each block."""
    paths, meters, memory = {}, {}, {}
    for name in names:
        log("path %s: build + %d warm-up steps", name, plan.warmup)
        with MemoryProbe(setup.device) as probe:
            paths[name] = BUILDERS[name](setup, plan)
            paths[name].run(plan.warmup, 0)
        memory[name] = probe.result
        meters[name] = Meter(setup.device)
    schedule: list[dict] = []
    results: dict = {}
    for b, order in enumerate(block_orders(names, plan.blocks)):
        load_before = load_average()
        for position, name in enumerate(order):
            paths[name].run(plan.lead_in, plan.block_steps, meters[name])
            meters[name].blocks[-1]["position"] = position
        schedule.append({"order": order, "load_average_1min": [load_before, load_average()]})
        results = {name: {**meters[name].result(), **memory[name]} for name in names}
        log(
            "block %d/%d: %s",
            b + 1,
            plan.blocks,
            ", ".join(f"{n} {meters[n].blocks[-1]['samples_per_s']:.1f}" for n in order),
        )
        if on_block is not None:
            on_block(results, schedule)
    return results, schedule
