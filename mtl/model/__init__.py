"""Model: encoder + heads, losses, loss weighting, metrics, optimiser groups, the LightningModule."""
