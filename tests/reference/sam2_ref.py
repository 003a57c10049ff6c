"""PyTorch reference for SAM 2 (image mode): the `sam2` package's SAM2Base built as the sam2.1 yaml configs
and `build_sam2` build it (without hydra), random weights, and the computations of `SAM2ImagePredictor`
(`set_image`, `_predict`) written out here (its module imports torchvision, which does not import beside the
CPU torch: see tests/reference/__init__.py)."""
from __future__ import annotations

import numpy as np
import torch

from tests.reference import sam2_modules
from zipjax.models.sam2.sam2 import Sam2Config

torch.set_grad_enabled(False)


def build_sam2(cfg: Sam2Config, seed: int = 0) -> torch.nn.Module:
  """`SAM2Base` with `cfg`'s architecture (sam2.1 yaml settings, `build_sam2`'s dynamic multimask
  postprocessing) and random weights (no zero / one parameter left), eval mode."""
  m = sam2_modules()
  torch.manual_seed(seed)
  d = cfg.d_model
  dims = [int(cfg.embed_dim * cfg.dim_mul ** i) for i in range(len(cfg.stages))]
  trunk = m["hieradet"].Hiera(
      embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, q_pool=cfg.q_pool, q_stride=cfg.q_stride,
      stages=cfg.stages, dim_mul=cfg.dim_mul, head_mul=cfg.head_mul,
      window_pos_embed_bkg_spatial_size=cfg.window_pos_embed_bkg_spatial_size, window_spec=cfg.window_spec,
      global_att_blocks=cfg.global_att_blocks)
  neck = m["image_encoder"].FpnNeck(
      position_encoding=m["position_encoding"].PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None,
                                                                     temperature=10000),
      d_model=d, backbone_channel_list=dims[::-1], fpn_top_down_levels=list(cfg.fpn_top_down_levels),
      fpn_interp_model="nearest")
  image_encoder = m["image_encoder"].ImageEncoder(trunk=trunk, neck=neck, scalp=cfg.scalp)
  e = cfg.embedding_size
  rope = m["transformer"].RoPEAttention
  layer = m["memory_attention"].MemoryAttentionLayer(
      activation="relu", dim_feedforward=2048, dropout=0.1, pos_enc_at_attn=False, d_model=d,
      self_attention=rope(rope_theta=10000.0, feat_sizes=[e, e], embedding_dim=d, num_heads=1, downsample_rate=1,
                          dropout=0.1),
      pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
      cross_attention=rope(rope_theta=10000.0, feat_sizes=[e, e], rope_k_repeat=True, embedding_dim=d,
                           num_heads=1, downsample_rate=1, dropout=0.1, kv_in_dim=64))
  memory_attention = m["memory_attention"].MemoryAttention(d_model=d, pos_enc_at_input=True, layer=layer,
                                                           num_layers=4)
  me = m["memory_encoder"]
  memory_encoder = me.MemoryEncoder(
      out_dim=64, in_dim=d,
      position_encoding=m["position_encoding"].PositionEmbeddingSine(num_pos_feats=64, normalize=True, scale=None,
                                                                     temperature=10000),
      mask_downsampler=me.MaskDownSampler(embed_dim=d, kernel_size=3, stride=2, padding=1),
      fuser=me.Fuser(layer=me.CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                                      use_dwconv=True), num_layers=2))
  extra = {"dynamic_multimask_via_stability": cfg.dynamic_multimask_via_stability,
           "dynamic_multimask_stability_delta": cfg.dynamic_multimask_stability_delta,
           "dynamic_multimask_stability_thresh": cfg.dynamic_multimask_stability_thresh}
  model = m["sam2_base"].SAM2Base(
      image_encoder=image_encoder, memory_attention=memory_attention, memory_encoder=memory_encoder, num_maskmem=7,
      image_size=cfg.img_size, sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
      use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=cfg.directly_add_no_mem_embed,
      no_obj_embed_spatial=True, use_high_res_features_in_sam=cfg.use_high_res_features, multimask_output_in_sam=True,
      iou_prediction_use_sigmoid=cfg.iou_prediction_use_sigmoid, use_obj_ptrs_in_encoder=True,
      add_tpos_enc_to_obj_ptrs=True, proj_tpos_enc_in_obj_ptrs=True, use_signed_tpos_enc_to_obj_ptrs=True,
      only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=cfg.pred_obj_scores,
      pred_obj_scores_mlp=cfg.pred_obj_scores_mlp, fixed_no_obj_ptr=True, multimask_output_for_tracking=True,
      use_multimask_token_for_obj_ptr=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
      use_mlp_for_obj_ptr_proj=True, compile_image_encoder=False, sam_mask_decoder_extra_args=extra)
  fixed = dict(decoder_depth=2, decoder_num_heads=8, decoder_mlp_dim=2048, iou_head_depth=3, iou_head_hidden_dim=256,
               mask_in_chans=16, num_multimask_outputs=3)
  if any(getattr(cfg, k) != v for k, v in fixed.items()):  # SAM2Base hard-codes these: rebuild the SAM heads
    from sam2.modeling.sam.mask_decoder import MaskDecoder  # pylint: disable=import-outside-toplevel
    from sam2.modeling.sam.prompt_encoder import PromptEncoder  # pylint: disable=import-outside-toplevel
    model.sam_prompt_encoder = PromptEncoder(embed_dim=d, image_embedding_size=(e, e),
                                             input_image_size=(cfg.img_size,) * 2, mask_in_chans=cfg.mask_in_chans)
    model.sam_mask_decoder = MaskDecoder(
        num_multimask_outputs=cfg.num_multimask_outputs,
        transformer=m["transformer"].TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=d,
                                                       mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads),
        transformer_dim=d, iou_head_depth=cfg.iou_head_depth, iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        use_high_res_features=cfg.use_high_res_features, iou_prediction_use_sigmoid=cfg.iou_prediction_use_sigmoid,
        pred_obj_scores=cfg.pred_obj_scores, pred_obj_scores_mlp=cfg.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=True, **extra)
  model.eval()
  randomize_(model, seed)
  return model


def randomize_(model: torch.nn.Module, seed: int) -> None:
  """Replaces the zero / one initialisations (norms, positional embeddings, biases) with random values."""
  gen = torch.Generator().manual_seed(seed + 1)
  layer_norm_2d = sam2_modules()["sam2_utils"].LayerNorm2d
  for module in model.modules():
    if isinstance(module, (torch.nn.LayerNorm, layer_norm_2d)):
      module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
      module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
  for name, p in model.named_parameters():
    if name.endswith(("pos_embed", "pos_embed_window", "no_mem_embed")):
      p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    elif name.endswith(".bias") and p.abs().max() == 0:
      p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.numpy().transpose(0, 2, 3, 1)


def image_features(model, pixels: np.ndarray, fpn: bool = True) -> dict:
  """Normalised pixels [B, S, S, 3] (NHWC numpy) -> {'fpn': the image encoder's `backbone_fpn` levels (NHWC;
  with `fpn`, one more encoder run), 'image_embed', 'high_res_feats' (torch), 'feat_s0', 'feat_s1': what
  `SAM2ImagePredictor.set_image` keeps (NHWC)}."""
  img = nchw(pixels)
  fpn = [nhwc(f) for f in model.image_encoder(img)["backbone_fpn"]] if fpn else None
  backbone_out = model.forward_image(img)
  _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)  # pylint: disable=protected-access
  if model.directly_add_no_mem_embed:
    vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
  b = img.shape[0]
  feats = [feat.permute(1, 2, 0).view(b, -1, *size) for feat, size in zip(vision_feats[::-1], feat_sizes[::-1])][::-1]
  return {"fpn": fpn, "image_embed": feats[-1], "high_res_feats": feats[:-1],
          "feat_s0": nhwc(feats[0]), "feat_s1": nhwc(feats[1])}


def predict(model, feats: dict, boxes=None, points=None, multimask: bool = False, img_idx: int = 0) -> dict:
  """`SAM2ImagePredictor._predict` on prompts already in the input frame -> numpy {'sparse', 'dense' (NHWC),
  'masks' [N, K, 4e, 4e] low-res logits, 'iou' [N, K], 'obj' [N, 1]}."""
  concat_points = None
  if points is not None:
    concat_points = (torch.as_tensor(points[0], dtype=torch.float), torch.as_tensor(points[1], dtype=torch.int))
  if boxes is not None:
    boxes = torch.as_tensor(boxes, dtype=torch.float)
    box_coords = boxes.reshape(-1, 2, 2)
    box_labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(boxes.size(0), 1)
    if concat_points is not None:
      concat_points = (torch.cat([box_coords, concat_points[0]], dim=1), torch.cat([box_labels, concat_points[1]], dim=1))
    else:
      concat_points = (box_coords, box_labels)
  sparse, dense = model.sam_prompt_encoder(points=concat_points, boxes=None, masks=None)
  batched_mode = concat_points is not None and concat_points[0].shape[0] > 1
  high_res = [level[img_idx].unsqueeze(0) for level in feats["high_res_feats"]]
  masks, iou, _, obj = model.sam_mask_decoder(
      image_embeddings=feats["image_embed"][img_idx].unsqueeze(0), image_pe=model.sam_prompt_encoder.get_dense_pe(),
      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
      repeat_image=batched_mode, high_res_features=high_res)
  return {"sparse": sparse.numpy(), "dense": nhwc(dense), "masks": masks.numpy(), "iou": iou.numpy(),
          "obj": obj.numpy()}
