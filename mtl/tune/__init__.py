"""Hyperparameter search (`scripts/tune.py`, docs/tune.md): an Optuna study over config keys whose
objective is the rows that choose (the selection rows, or out-of-fold predictions), never a val
or test file.

    space.py      the `tune:` section: every space key a real config key, every bound a value it
                  accepts (optuna-free: every config load runs it)
    objective.py  one trial: its config, its run folder and lock, per-epoch pruning, its score
    storage.py    the study folder and its Optuna storage (SQLite, RDB URL, journal file)
    study.py      the study's identity, the trial loop, trials whose worker died
    workers.py    each worker's liveness lock
    outputs.py    best.yaml, trials.csv, plots, TensorBoard hparams, report.md
"""
