import json

from mtl.run.train import train


def test_tiny_training_run_writes_the_run_folder_contract(tiny_cfg):
    cfg = tiny_cfg()
    results = train(cfg)
    run = f"{cfg.run.output_dir}/{cfg.run.name}"
    from pathlib import Path

    run = Path(run)
    for name in (
        "config.yaml",
        "results.json",
        "fold_0/best.ckpt",
        "fold_0/last.ckpt",
        "fold_0/metrics.json",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").rglob("events.out.tfevents*"))
    stored = json.loads((run / "results.json").read_text())
    assert set(stored["tasks"]) == {"toxicity", "emotion", "sentiment"}
    assert stored["score"] == results["score"]
