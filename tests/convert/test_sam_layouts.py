"""transformers SamModel checkpoints: built by transformers with random weights, saved with save_pretrained
(safetensors + config.json), converted, and compared with transformers' own forward pass (image embeddings
and box-prompted masks, relative error < 1e-5 in float32 with matmul precision highest); the released
vit_b / vit_l / vit_h layouts checked by key tables and shapes."""
import numpy as np
import pytest
import torch

import zipjax
from tests.models.sam_net.helpers import nchw, rel_err
from tests.reference.libraries import make_hf_sam
from zipjax.cli import main as cli_main
from zipjax.convert.sam import convert_state_dict
from zipjax.errors import CheckpointError
from zipjax.models.sam_net.model import SamConfig

TOL = 1e-5
CFG = SamConfig.tiny()
torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def hf_sam():
  return make_hf_sam(CFG, seed=5)


def test_transformers_sam_parity(hf_sam, tmp_path, capsys):
  hf_sam.save_pretrained(tmp_path / "hf")
  src = tmp_path / "hf" / "model.safetensors"
  dst = tmp_path / "converted"
  assert cli_main(["convert", "sam", str(src), str(dst)]) == 0
  assert "transformers SamModel layout: SAM custom (width 64, depth 4, image 128)" in capsys.readouterr().out
  sam = zipjax.load_sam(dst)
  assert sam.config == CFG
  x = np.random.default_rng(0).standard_normal((1, 128, 128, 3)).astype(np.float32)
  boxes = np.array([[[5, 6, 70, 90], [30, 0, 127, 64]]], np.float32)
  want_emb = hf_sam.get_image_embeddings(nchw(x))
  emb = sam.image_embeddings(x)
  assert rel_err(emb, want_emb.numpy().transpose(0, 2, 3, 1)) < TOL
  want = hf_sam(image_embeddings=want_emb, input_boxes=torch.from_numpy(boxes), multimask_output=True)
  logits, iou = sam.predict_boxes(emb, boxes, multimask=True)
  assert rel_err(logits[0], want.pred_masks[0].numpy()) < TOL
  assert rel_err(iou[0], want.iou_scores[0].numpy()) < TOL
  assert zipjax.load_sam(tmp_path / "hf").config == CFG  # the save_pretrained folder itself


def test_tied_copies_must_agree_and_unknown_keys_name_the_layout(hf_sam):
  sd = {k: v.numpy().copy() for k, v in hf_sam.state_dict().items()}
  sd["prompt_encoder.shared_embedding.positional_embedding"] += 1
  with pytest.raises(CheckpointError, match="tied copies .* but differ"):
    convert_state_dict(sd, "hf.safetensors")
  sd = {k: v.numpy() for k, v in hf_sam.state_dict().items()}
  sd["mask_decoder.iou_prediction_head.layers.1.weight"] = np.zeros((64, 64), np.float32)
  with pytest.raises(CheckpointError, match=r"(?s)transformers SamModel layout.*layers\.1\.weight.*unexpected key"):
    convert_state_dict(sd, "hf.safetensors")
  renamed = {k.replace("vision_encoder.", "vis."): v for k, v in sd.items()}
  with pytest.raises(CheckpointError, match=r"(?s)matches no known SAM layout .*nearest: .*'vis\."):
    convert_state_dict(renamed, "x.safetensors")


def test_transformers_config_other_than_released_sam_is_refused(hf_sam, tmp_path):
  hf_sam.save_pretrained(tmp_path)
  cfg = __import__("json").loads((tmp_path / "config.json").read_text())
  cfg["mask_decoder_config"]["hidden_act"] = "gelu"
  (tmp_path / "config.json").write_text(__import__("json").dumps(cfg))
  with pytest.raises(CheckpointError, match="mask_decoder_config.hidden_act='gelu'.*would give wrong masks"):
    zipjax.load_sam(tmp_path)


_RELEASED = {
    "vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                  global_attn_indexes=[7, 15, 23, 31]),
}


@pytest.mark.parametrize("size", sorted(_RELEASED))
def test_released_transformers_sam_layouts_by_shapes(size):
  from transformers import SamConfig as HFSamConfig, SamModel  # pylint: disable=import-outside-toplevel
  with torch.device("meta"):
    model = SamModel(HFSamConfig(vision_config=_RELEASED[size]))
  zero = np.zeros((), np.float32)
  sd = {k: np.broadcast_to(zero, tuple(v.shape)) for k, v in model.state_dict().items()}
  config, variables = convert_state_dict(sd, f"facebook/sam-{size}", check_only=True)
  assert variables is None and config.size_name() == size
