"""SAM 2 converter: the official `.pt` (`{"model": state_dict}`, read as data) through `zipjax convert sam2` and
`zipjax.load_sam` (file, converted directory, manifest name), the declared list of skipped video-mode keys, strict
errors naming the file and the key, and the transformers `Sam2Model` layout (safetensors model folder) against
transformers' own outputs."""
from __future__ import annotations

import functools
import json
import os
import re

import numpy as np
import pytest
import torch

import zipjax
from tests.reference.sam2_ref import build_sam2, image_features, predict, state_dict_numpy
from zipjax.cli import main as cli_main
from zipjax.convert import sam2 as sam2_convert
from zipjax.models.tree import flatten
from zipjax.errors import CheckpointError
from zipjax.models.sam2.sam2 import Sam2Config
from zipjax.sam import Sam2Model

RTOL = 1e-4
S = 256  # the tests run the official tiny weights at a 256-pixel input (the checkpoint does not fix the size)


def rel_err(a, b) -> float:
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@functools.lru_cache(maxsize=1)
def _torch_tiny():
  return build_sam2(Sam2Config.from_size("tiny", img_size=S), seed=11)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """(torch model, numpy state dict, path of the official-layout .pt)."""
  model = _torch_tiny()
  path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
  torch.save({"model": model.state_dict()}, path)
  return model, state_dict_numpy(model), str(path)


def _save(tmp_path, sd, name="bad.pt"):
  path = tmp_path / name
  torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}}, path)
  return str(path)


def _same_variables(a, b):
  fa, fb = flatten(a), flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_cli_convert_then_load_file_dir_and_manifest_name(official, tmp_path, capsys, monkeypatch):
  _, sd, pt = official
  dst = str(tmp_path / "sam2_tiny")
  assert cli_main(["convert", "sam2", pt, dst]) == 0
  out = capsys.readouterr().out
  assert "sam2 layout: SAM 2.1 hiera tiny" in out and dst in out
  assert sorted(os.listdir(dst)) == ["config.json", "params.npz"]
  assert json.load(open(os.path.join(dst, "config.json")))["family"] == "sam2"
  want_cfg, want = sam2_convert.convert_state_dict(sd, "direct")
  assert want_cfg == Sam2Config.from_size("tiny") and want_cfg.img_size == 1024
  from_dir, from_pt = zipjax.load_sam(dst), zipjax.load_sam(pt)
  for model in (from_dir, from_pt):
    assert isinstance(model, Sam2Model) and model.config == want_cfg
    _same_variables(model.variables, want)
  # a manifest name: the published file in the cache is converted once, then the converted directory is used
  cache = tmp_path / "cache"
  (cache / "downloads").mkdir(parents=True)
  os.link(pt, cache / "downloads" / "sam2.1_hiera_tiny.pt")
  monkeypatch.setenv("ZIPJAX_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  by_name = zipjax.load_sam("sam2.1_hiera_tiny")
  assert isinstance(by_name, Sam2Model) and os.path.isdir(cache / "converted" / "sam2.1_hiera_tiny")
  _same_variables(by_name.variables, want)
  os.unlink(cache / "downloads" / "sam2.1_hiera_tiny.pt")
  _same_variables(zipjax.load_sam("sam2.1_hiera_tiny").variables, want)


def test_converted_weights_compute_the_reference(official):
  """The file path's weights, run at 256 px (the size is not in the weights), equal the torch model."""
  model, _, pt = official
  loaded = zipjax.load_sam(pt)
  small = Sam2Model(loaded.config.replace(img_size=S), loaded.variables)
  pixels = np.random.default_rng(0).standard_normal((1, S, S, 3)).astype(np.float32)
  boxes = np.array([[10, 20, 120, 140], [30, 5, 250, 90]], np.float32)
  emb = small.image_embeddings(pixels)
  want = image_features(model, pixels, fpn=False)
  assert rel_err(emb["image_embed"], want["image_embed"].numpy().transpose(0, 2, 3, 1)) < RTOL
  ref = predict(model, want, boxes=boxes, multimask=True)
  masks, iou = small.predict_boxes(emb, boxes[None], multimask=True)
  assert rel_err(masks[0], ref["masks"]) < RTOL and rel_err(iou[0], ref["iou"]) < RTOL


def test_video_keys_are_skipped_by_the_declared_list(official):
  _, sd, _ = official
  video = [k for k in sd if any(re.fullmatch(p, k) for p in sam2_convert.VIDEO_ONLY)]
  assert any(k.startswith("memory_attention.") for k in video) and any(k.startswith("memory_encoder.") for k in video)
  assert {"maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial"} <= set(video)
  assert any(k.startswith(("obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.")) for k in video)
  image_only = {k: v for k, v in sd.items() if k not in video}
  _, a = sam2_convert.convert_state_dict(sd, "full")
  _, b = sam2_convert.convert_state_dict(image_only, "image-only")
  _same_variables(a, b)


def test_unknown_missing_and_misshaped_keys_fail_naming_file_and_key(official, tmp_path):
  _, sd, _ = official
  bad = dict(sd, **{"sam_mask_decoder.extra_head.weight": np.zeros((2, 2), np.float32)})
  path = _save(tmp_path, bad, "unknown.pt")
  with pytest.raises(CheckpointError, match=r"(?s)unknown\.pt.*'sam_mask_decoder\.extra_head\.weight'.*unexpected"):
    zipjax.load_sam(path)
  missing = {k: v for k, v in sd.items() if k != "sam_mask_decoder.conv_s1.bias"}
  with pytest.raises(CheckpointError, match=r"missing key 'sam_mask_decoder\.conv_s1\.bias'"):
    sam2_convert.convert_state_dict(missing, "missing.pt")
  wrong = dict(sd)
  wrong["image_encoder.trunk.blocks.3.attn.qkv.weight"] = np.zeros((10, 192), np.float32)
  with pytest.raises(CheckpointError, match=r"(?s)wrong\.pt.*'image_encoder\.trunk\.blocks\.3\.attn\.qkv\.weight': "
                                            r"expected shape \(1152, 192\), found \(10, 192\)"):
    sam2_convert.convert_state_dict(wrong, "wrong.pt")


def test_unknown_trunk_needs_an_architecture(official):
  _, sd, _ = official
  cut = {k: v for k, v in sd.items() if not k.startswith("image_encoder.trunk.blocks.11.")}  # 11 of 12 blocks
  with pytest.raises(CheckpointError, match=r"none of the sam2\.1 sizes"):
    sam2_convert.convert_state_dict(cut, "cut.pt")


def test_sam_family_converter_points_to_sam2(official, tmp_path, capsys):
  _, _, pt = official
  assert cli_main(["convert", "sam", pt, str(tmp_path / "x")]) == 2
  assert "zipjax convert sam2" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ transformers layout
def _hf_model(seed: int = 4):
  from transformers import Sam2Config as HFConfig  # pylint: disable=import-outside-toplevel
  from transformers import Sam2Model as HFModel  # pylint: disable=import-outside-toplevel
  cfg = HFConfig()  # the sam2.1 hiera_tiny architecture, at a 256-pixel input here
  cfg.vision_config.backbone_config.image_size = [S, S]
  cfg.vision_config.backbone_feature_sizes = [[S // 4, S // 4], [S // 8, S // 8], [S // 16, S // 16]]
  cfg.prompt_encoder_config.image_size = S
  torch.manual_seed(seed)
  model = HFModel(cfg).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name and name.endswith(".weight"):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
      elif name.endswith(("pos_embed", "pos_embed_window", "no_memory_embedding")) or (
          name.endswith(".bias") and p.abs().max() == 0):
        p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    # one Fourier matrix in SAM 2 (pe_layer); Sam2Model keeps two copies, equal in the released checkpoints
    model.prompt_encoder.shared_embedding.positional_embedding.copy_(model.shared_image_embedding.positional_embedding)
  return model


def test_transformers_layout_matches_transformers(tmp_path):
  model = _hf_model()
  folder = tmp_path / "hf"
  model.save_pretrained(folder)  # model.safetensors + config.json: a Hub model folder
  loaded = zipjax.load_sam(str(folder))
  assert isinstance(loaded, Sam2Model) and loaded.config.size_name() == "tiny"
  small = Sam2Model(loaded.config.replace(img_size=S), loaded.variables)
  rng = np.random.default_rng(1)
  pixels = rng.standard_normal((1, S, S, 3)).astype(np.float32)
  boxes = np.array([[10, 20, 120, 140], [30, 5, 250, 90], [0, 0, 255, 255]], np.float32)
  emb = small.image_embeddings(pixels)
  with torch.no_grad():
    px = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
    feats = model.get_image_embeddings(px)
    assert rel_err(emb["image_embed"], feats[-1].numpy().transpose(0, 2, 3, 1)) < RTOL
    for multimask in (False, True):
      out = model(pixel_values=px, input_boxes=torch.from_numpy(boxes[None]), multimask_output=multimask)
      masks, iou = small.predict_boxes(emb, boxes[None], multimask=multimask)
      assert masks.shape == tuple(out.pred_masks.shape)
      assert rel_err(masks, out.pred_masks.numpy()) < RTOL
      assert rel_err(iou, out.iou_scores.numpy()) < RTOL


def test_transformers_video_keys_are_skipped(tmp_path):
  sd = {k: v.detach().numpy() for k, v in _hf_model().state_dict().items()}
  _, want = sam2_convert.convert_state_dict(sd, "hf")
  extra = dict(sd, **{"memory_attention.layers.0.linear1.weight": np.zeros((4, 4), np.float32),
                      "no_object_pointer": np.zeros((1, 256), np.float32),
                      "object_pointer_proj.layers.0.weight": np.zeros((4, 4), np.float32)})
  _, got = sam2_convert.convert_state_dict(extra, "hf-video")
  _same_variables(got, want)
  extra["mask_decoder.surprise.weight"] = np.zeros((2,), np.float32)
  with pytest.raises(CheckpointError, match=r"(?s)'mask_decoder\.surprise\.weight'.*unexpected"):
    sam2_convert.convert_state_dict(extra, "hf-bad")
  untied = dict(sd, **{"prompt_encoder.shared_embedding.positional_embedding":
                       sd["shared_image_embedding.positional_embedding"] + 1})
  with pytest.raises(CheckpointError, match="are tied copies of 'sam_prompt_encoder.pe_layer.positional_encoding_"
                                            "gaussian_matrix' but differ"):
    sam2_convert.convert_state_dict(untied, "hf-untied")


def test_transformers_config_json_declaring_another_architecture_is_refused(tmp_path):
  model = _hf_model()
  folder = tmp_path / "hf"
  model.save_pretrained(folder)
  cfg = json.loads((folder / "config.json").read_text())
  cfg["vision_config"]["backbone_config"]["num_attention_heads"] = 2  # heads are not in the weights
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"num_attention_heads=2 but the weights are SAM 2.1 hiera tiny"):
    zipjax.load_sam(str(folder))
