"""Smoke configuration with SAM 2 as the refiner: configs/smoke.py with `sam.family = 'sam2'` and a tiny random
SAM 2 (Hiera of width 16 with 1, 1, 2, 1 blocks at 256 px: 16 x 16 embeddings, 64 x 64 low-res masks; narrow
decoder), so a run takes seconds per image on 2 CPU cores.

  zipjax segment examples/oranges.png --classes orange --random-init --config configs/smoke_sam2.py --out /tmp/s2

Checkpoint names stay the real ones (a run without --random-init needs them).
"""
import importlib.util
import os

import ml_collections


def _smoke():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smoke.py")
  spec = importlib.util.spec_from_file_location("_zipjax_smoke_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _smoke()
  config.sam.family = "sam2"
  config.models.sam = ml_collections.ConfigDict({"checkpoint": "sam2.1_hiera_base_plus", "arch": dict(
      embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,), window_spec=(4, 4, 4, 2),
      window_pos_embed_bkg_spatial_size=(4, 4), img_size=256, d_model=32, mask_in_chans=4, decoder_depth=1,
      decoder_num_heads=2, decoder_mlp_dim=64, iou_head_hidden_dim=32), "dtype": "float32"})
  return config
