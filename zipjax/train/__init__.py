"""Training of the open-vocabulary detector: the exact matcher (`matcher`), box operations (`box_ops`), the set
loss (`losses`), the config groups of the model and the loss (`config_parts`), and the trainer behind
`zipjax train` (`trainer`; its mesh and FSDP rules come from `zipjax.parallel`, as the labeller's), optimizer
(`optim`), logs (`metrics`) and the inference used by evaluation and `zipjax detect` (`predict`)."""
