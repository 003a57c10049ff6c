"""Long-running drivers: `label` (the engine over a dataset: sharded, resumable, merged) and `selftrain` (rounds of
detector training, prediction and label merging, resumable)."""
