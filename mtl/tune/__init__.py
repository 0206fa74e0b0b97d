"""Hyperparameter search (`scripts/tune.py`, docs/tune.md): an Optuna study over config keys whose
objective is the rows that choose (the selection rows, or out-of-fold predictions), never a val
or test file.

    space.py      the `tune:` section: every space key a real config key, every bound a value it
                  accepts (optuna-free: every config load runs it)
    objective.py  one trial: its config, its run folder and lock, per-epoch pruning, its score
    study.py      storage, the study's identity, the trial loop, dead trials
    outputs.py    best.yaml, trials.csv, plots, TensorBoard hparams, report.md
"""
