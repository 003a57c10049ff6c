"""Former home of the trainer's mesh and FSDP rules; both now live in `zipjax.parallel` (one implementation for
the labelling engine and the trainer: `create_mesh`, `param_shardings` with "fsdp" rules, `batch_sharding`,
`global_batch`). These two aliases keep code written against the old module working (the self-training job);
new code imports `zipjax.parallel`.
"""
from zipjax.parallel import create_mesh as make_mesh
from zipjax.parallel import replicated

__all__ = ["make_mesh", "replicated"]
