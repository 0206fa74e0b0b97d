"""Data: files → checked labels and token ids, task types, folds, sampling, the DataModule."""
