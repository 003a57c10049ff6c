"""Smoke configuration: the `zip` preset with tiny random-initialisable models of the same families (CLIP ViT
with CLIP Surgery, CLIP ModifiedResNet, SAM with box prompts) and small inputs, so a run takes seconds per image on 2 CPU cores.

  zipjax segment examples/oranges.png --classes orange --random-init --config configs/smoke.py --out /tmp/smoke

CI and the CLI tests use it. Checkpoint names stay the real ones (a run without --random-init needs them).
"""
import ml_collections

from zipjax import configs


def get_config():
  config = configs.zip()
  m = config.models
  text = dict(context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
              transformer_layers=1)
  # ViT: 2 blocks of width 64, patch 16, the last one with the surgery dual path
  m.semantic = ml_collections.ConfigDict({"checkpoint": m.semantic.checkpoint, "arch": dict(
      embed_dim=64, image_resolution=64, vision_layers=2, vision_width=64, vision_patch_size=16,
      surgery_depth=1, **text)})
  # ModifiedResNet: one bottleneck per stage, width 16 (layer3: 256 channels, stride 16)
  m.boundary = ml_collections.ConfigDict({"checkpoint": m.boundary.checkpoint, "arch": dict(
      embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16, vision_patch_size=None,
      **text)})
  # SAM: 2 encoder blocks of width 32 at 256 px (16 x 16 embeddings, 64 x 64 low-res masks), narrow decoder
  m.sam = ml_collections.ConfigDict({"checkpoint": m.sam.checkpoint, "arch": dict(
      encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
      img_size=256, window_size=4, prompt_embed_dim=32, mask_in_chans=4, decoder_depth=1, decoder_num_heads=2,
      decoder_mlp_dim=64, iou_head_hidden_dim=32)})
  for model in (m.semantic, m.boundary, m.sam):
    model.dtype = "float32"             # CPU: float32 (bf16 is emulated and slow there)
  config.sam.max_boxes = 16
  config.semantic.input_size = 224      # 14 x 14 token grid
  config.boundary.input_size = 384      # shorter side; 24 x 32 feature cells for a 4:3 image
  config.discover.min_instance_cells = 8
  config.discover.max_instances = 32
  config.batch_size = 2
  config.output.overlay_max_side = 512
  return config
