"""The `zip` preset: the paper's method with the released code's quirks fixed.

Use it with ml_collections' config flags, e.g.

  python -c "from configs.zip import get_config; print(get_config())"

or pass the file to a driver that takes `--config=configs/zip.py` (overrides as
`--config.discover.semantic.background_clusters=8`).
"""
from zipjax import configs


def get_config():
  return configs.zip()
