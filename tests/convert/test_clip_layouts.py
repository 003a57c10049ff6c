"""CLIP layouts other than OpenAI's: open_clip state dicts (ViT, ModifiedResNet) and transformers CLIPModel,
built by those libraries with random weights, saved as they save them (safetensors), converted and compared
with the library's own forward pass (relative error < 1e-5, float32, matmul precision highest)."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import zipjax
from tests.reference.clip_ref import nchw, rel_err
from tests.reference.libraries import make_hf_clip, make_open_clip, open_clip_model
from zipjax.cli import main as cli_main
from zipjax.convert.clip import NO_HF_RESNET, convert_state_dict, detect
from zipjax.errors import CheckpointError, InputError
from zipjax.models.tokenizer import get_tokenizer

TOL = 1e-5
TEXTS = ["a cat", "two dogs on a red sofa"]
torch.set_grad_enabled(False)


def _tokens():
  return torch.from_numpy(np.asarray(get_tokenizer().tokenize(TEXTS))).long()


def _pixels(res, n=2):
  return np.random.default_rng(0).standard_normal((n, res, res, 3)).astype(np.float32)


def _features(out):
  """transformers >= 5 returns a model output from get_*_features; older versions a tensor."""
  return (getattr(out, "pooler_output", None) if not isinstance(out, torch.Tensor) else out).numpy()


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_open_clip_parity(tmp_path, capsys, kind):
  if kind == "vit":
    model, res = make_open_clip(embed_dim=32, image_size=32, layers=2, width=64, patch_size=16, seed=1), 32
  else:
    model, res = make_open_clip(embed_dim=64, image_size=64, layers=(1, 2, 1, 1), width=16, seed=2), 64
  src = tmp_path / "open_clip_model.safetensors"
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src))
  (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
  dst = tmp_path / "converted"
  assert cli_main(["convert", "clip", str(src), str(dst)]) == 0
  assert "OpenAI / open_clip layout" in capsys.readouterr().out
  clip = zipjax.load_clip(dst)
  x = _pixels(res)
  assert rel_err(clip.encode_image(x), model.encode_image(nchw(x)).numpy()) < TOL
  assert rel_err(clip.encode_text(TEXTS), model.encode_text(_tokens()).numpy()) < TOL
  if kind == "resnet":
    v = model.visual
    want = v.layer3(v.layer2(v.layer1(v.stem(nchw(x))))).numpy().transpose(0, 2, 3, 1)
    assert rel_err(clip.trunk_features(x, 3), want) < TOL


def test_open_clip_gelu_model_is_refused(tmp_path):
  model = make_open_clip(embed_dim=32, image_size=32, layers=1, width=64, patch_size=16, text_layers=1)
  src = tmp_path / "open_clip_model.safetensors"
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src))
  (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 32}}))
  with pytest.raises(CheckpointError, match="does not set quick_gelu: this open_clip model uses nn.GELU"):
    zipjax.load_clip(src)


def test_transformers_clip_parity(tmp_path, capsys):
  model = make_hf_clip(seed=4)
  model.save_pretrained(tmp_path / "hf")  # model.safetensors + config.json, as on the Hub
  src = tmp_path / "hf" / "model.safetensors"
  assert src.is_file()
  dst = tmp_path / "converted.safetensors"
  assert cli_main(["convert", "clip", str(src), str(dst), "--format", "safetensors"]) == 0
  assert "transformers CLIPModel layout" in capsys.readouterr().out
  clip = zipjax.load_clip(dst)
  x = _pixels(32)
  assert rel_err(clip.encode_image(x), _features(model.get_image_features(pixel_values=nchw(x)))) < TOL
  assert rel_err(clip.encode_text(TEXTS), _features(model.get_text_features(input_ids=_tokens()))) < TOL
  # the save_pretrained folder itself (a Hub snapshot looks the same): its model.safetensors is read
  folder = zipjax.load_clip(tmp_path / "hf")
  assert folder.config == clip.config
  assert np.array_equal(np.asarray(folder.encode_image(x)), np.asarray(clip.encode_image(x)))
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="not a converted zipjax checkpoint .* nor a model folder"):
    zipjax.load_clip(tmp_path / "empty")


def test_transformers_config_other_than_openai_is_refused(tmp_path):
  model = make_hf_clip(layers=1, text_layers=1)
  model.config.text_config.hidden_act = "gelu"
  model.save_pretrained(tmp_path)
  with pytest.raises(CheckpointError, match="hidden_act='gelu'.*would give wrong embeddings"):
    zipjax.load_clip(tmp_path / "model.safetensors")


def test_no_layout_names_the_nearest_and_the_keys_that_do_not_fit():
  sd = {k: v.numpy() for k, v in make_hf_clip(layers=1, text_layers=1).state_dict().items()}
  sd = {k.replace("text_model.", "txt."): v for k, v in sd.items()}
  with pytest.raises(CheckpointError) as e:
    detect(sd, "x.safetensors")
  msg = str(e.value)
  assert "matches no known CLIP layout" in msg and "nearest: transformers CLIPModel" in msg, msg
  assert "'txt.embeddings" in msg and "\n" not in msg, msg
  # a known layout with a key it does not have: the strict table names the key and the layout
  oc = {k: v.numpy() for k, v in make_open_clip(embed_dim=32, image_size=32, layers=1, width=64, patch_size=16,
                                                 text_layers=1).state_dict().items()}
  oc["visual.transformer.resblocks.0.ls_1.gamma"] = np.ones(64, np.float32)
  with pytest.raises(CheckpointError, match=r"(?s)OpenAI / open_clip layout.*ls_1\.gamma.*unexpected key"):
    convert_state_dict(oc, "oc.pt")


def test_transformers_has_no_resnet(tmp_path):
  sd = {k: v.numpy() for k, v in make_hf_clip(layers=1, text_layers=1).state_dict().items()}
  sd["vision_model.embedder.conv1.weight"] = np.zeros((8, 3, 3, 3), np.float32)
  with pytest.raises(CheckpointError, match="transformers has no ModifiedResNet CLIP"):
    detect(sd, "hf")
  assert "ViT only" in NO_HF_RESNET


def _meta_state_dict(model) -> dict:
  """Shapes only: zero-stride numpy views (no memory) of a model built on the meta device."""
  zero = np.zeros((), np.float32)
  return {k: np.broadcast_to(zero, tuple(v.shape)) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["ViT-B-16", "RN50x64"])
def test_real_size_open_clip_layouts_by_shapes(name):
  m = open_clip_model()
  arch = {"ViT-B-16": dict(embed_dim=512, vision_cfg=m.CLIPVisionCfg(layers=12, width=768, patch_size=16,
                                                                      image_size=224),
                           text_cfg=m.CLIPTextCfg(width=512, heads=8, layers=12)),
          "RN50x64": dict(embed_dim=1024, vision_cfg=m.CLIPVisionCfg(layers=(3, 15, 36, 10), width=128,
                                                                      image_size=448),
                          text_cfg=m.CLIPTextCfg(width=1024, heads=16, layers=12))}[name]
  with torch.device("meta"):
    model = m.CLIP(quick_gelu=True, **arch)
  config, variables = convert_state_dict(_meta_state_dict(model), name, check_only=True)
  assert variables is None
  want = zipjax.models.clip_net.ARCHITECTURES[name.replace("ViT-B-16", "ViT-B/16")]
  assert config.replace(surgery_depth=want.surgery_depth) == want


def test_real_size_transformers_vit_b16_by_shapes():
  from transformers import CLIPConfig, CLIPModel  # pylint: disable=import-outside-toplevel
  cfg = CLIPConfig(projection_dim=512, text_config=dict(hidden_act="quick_gelu"),
                   vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, patch_size=16, hidden_act="quick_gelu"))
  with torch.device("meta"):
    model = CLIPModel(cfg)
  config, _ = convert_state_dict(_meta_state_dict(model), "hf ViT-B/16", check_only=True)
  assert config == zipjax.models.clip_net.ARCHITECTURES["ViT-B/16"]


def test_a_vit_as_boundary_model_says_transformers_has_no_resnet():
  from zipjax.configs import reference  # pylint: disable=import-outside-toplevel
  from zipjax.pipeline.load import check_models  # pylint: disable=import-outside-toplevel
  sd = {k: v.numpy() for k, v in make_hf_clip(layers=1, text_layers=1).state_dict().items()}
  vit = zipjax.clip.ClipModel(*convert_state_dict(sd, "hf"), name="hf")
  with pytest.raises(InputError, match="models.boundary must be a CLIP ModifiedResNet.*transformers has no "
                                       "ModifiedResNet CLIP"):
    check_models(reference(), vit, vit, None)
