"""Training of the open-vocabulary detector: the exact matcher (`matcher`), box operations (`box_ops`), the set
loss (`losses`) and the config groups of the model and the loss (`config_parts`)."""
