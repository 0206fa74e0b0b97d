"""The bundled default-run data (data/sample/) cut from the full datasets: random rows with a fixed
seed; sentiment keeps SST-2 phrases of at least 6 words (the train split is full of 1-3 word
fragments) and splits them into train and val since SST-2 here has no val file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SEED = 13


def sample(frame: pd.DataFrame, n: int, seed: int = SEED) -> pd.DataFrame:
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


def make_sample(src: Path, out: Path, train: int, val: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for task in ("toxicity", "emotion"):
        sample(pd.read_csv(src / f"{task}_train.csv"), train).to_csv(
            out / f"{task}_train.csv", index=False
        )
        sample(pd.read_csv(src / f"{task}_val.csv"), val).to_csv(
            out / f"{task}_val.csv", index=False
        )
    sst = pd.read_csv(src / "sentiment_train.csv")
    sst = sample(sst[sst.text.str.split().str.len() >= 6], train + val)
    sst.iloc[:train].to_csv(out / "sentiment_train.csv", index=False)
    sst.iloc[train:].to_csv(out / "sentiment_val.csv", index=False)
