"""Regenerate data/sample/ (the bundled default-run data) from the full datasets in ../shared/data.

    python scripts/make_sample.py --source ../shared/data --out data/sample

Random rows with a fixed seed; sentiment keeps SST-2 phrases of at least 6 words (the train split
is full of 1-3 word fragments) and splits them into train and val since SST-2 here has no val file.
"""

import argparse
from pathlib import Path

import pandas as pd

SEED = 13


def sample(frame: pd.DataFrame, n: int, seed: int = SEED) -> pd.DataFrame:
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/data")
    parser.add_argument("--out", default="data/sample")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    args = parser.parse_args()
    src, out = Path(args.source), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in ("toxicity", "emotion"):
        sample(pd.read_csv(src / f"{task}_train.csv"), args.train).to_csv(
            out / f"{task}_train.csv", index=False
        )
        sample(pd.read_csv(src / f"{task}_val.csv"), args.val).to_csv(
            out / f"{task}_val.csv", index=False
        )
    sst = pd.read_csv(src / "sentiment_train.csv")
    sst = sample(sst[sst.text.str.split().str.len() >= 6], args.train + args.val)
    sst.iloc[: args.train].to_csv(out / "sentiment_train.csv", index=False)
    sst.iloc[args.train :].to_csv(out / "sentiment_val.csv", index=False)


if __name__ == "__main__":
    main()
