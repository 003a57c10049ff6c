"""Long-running drivers built on the engine: `label` (sharded, resumable, merged)."""
