"""The `reference` preset: reproduces the released Zip code's discovery exactly.

Use it with ml_collections' config flags, e.g.

  python -c "from configs.reference import get_config; print(get_config())"

or pass the file to a driver that takes `--config=configs/reference.py` (overrides as
`--config.discover.num_clusters=16`).
"""
from zipjax import configs


def get_config():
  return configs.reference()
