"""Training of the open-vocabulary detector, one file per concern: the exact matcher (`matcher`), box operations
(`box_ops`), the set loss (`losses`), the typed config groups of configs/train_*.py (`config_parts`), what is
trained and with which text (`task`), the loop behind `zipjax train` (`trainer`; its mesh and FSDP rules come
from `zipjax.parallel`, as the labeller's), its checkpoints (`checkpoints`: orbax's CheckpointManager), the
evaluation during training (`evaluator`), the optimizer (`optim`), logs (`metrics`) and detector inference
(`predict`: `Inference`, shared by evaluation, `zipjax detect` and self-training)."""
