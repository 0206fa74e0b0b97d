"""A run: the fold loop, prediction files, blending, results, report, run-folder integrity."""
