"""PyTorch + NumPy reference of the `reference` preset end to end, in the released code's style.

Semantic clues with OpenAI's CLIP classes (random weights; CLIP Surgery from `clip_ref.surgery_encode`), the
CLIP Surgery prompt ensemble with OpenAI's tokenizer, `clip_feature_surgery` with redundant features and the
token-axis normalisation, `get_similarity_map` (min-max, torch bilinear), the boundary features of a
ModifiedResNet's layer3 (`clip_ref.resnet_stages`), the activation (0.7 * mean, torch nearest) and the
released discovery (`zip_discover.discover_reference`), then boxes with the swapped scale factors.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tests.reference import clip_modules, clip_ref, zip_discover

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _to_tensor(img: Image.Image) -> torch.Tensor:
  x = torch.from_numpy(np.asarray(img, np.uint8).copy()).permute(2, 0, 1).float() / 255.0
  return ((x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None]  # [1, 3, H, W]


def tokenize(texts, context_length: int = 77) -> torch.Tensor:
  """`clip.tokenize` (truncating) with openai-clip's SimpleTokenizer."""
  _, tok_mod = clip_modules()
  tok = tok_mod.SimpleTokenizer()
  sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
  out = torch.zeros(len(texts), context_length, dtype=torch.long)
  for i, t in enumerate(texts):
    ids = [sot] + tok.encode(t) + [eot]
    if len(ids) > context_length:
      ids = ids[:context_length]
      ids[-1] = eot
    out[i, :len(ids)] = torch.tensor(ids)
  return out


@torch.no_grad()
def encode_text_with_prompt_ensemble(model, texts, templates) -> torch.Tensor:
  """CLIP Surgery's prompt ensemble -> [n, D]."""
  feats = []
  for t in texts:
    tok = tokenize([tpl.format(t) for tpl in templates])
    e = model.encode_text(tok)
    e = e / e.norm(dim=-1, keepdim=True)
    e = e.mean(dim=0)
    feats.append(e / e.norm())
  return torch.stack(feats, dim=1).t()


@torch.no_grad()
def reference_pipeline(image: np.ndarray, names, vit, resnet, templates, semantic_size: int,
                       boundary_size: int, surgery_depth: int, discover_kwargs: dict, k: int = 20,
                       activation_factor: float = 0.7) -> dict:
  """The `reference` preset on one uint8 RGB image.

  Returns:
    dict: labels int [n, h, w] instance label maps per class, boxes list (per class) of [x0, y0, x1, y1],
    similarity float32 [H, W, n], probs float32 [n].
  """
  hh, ww = image.shape[:2]
  pil = Image.fromarray(image, "RGB")
  x = _to_tensor(pil.resize((semantic_size, semantic_size), Image.BICUBIC))
  text = encode_text_with_prompt_ensemble(vit, names, templates)  # [n, D]
  redundant = encode_text_with_prompt_ensemble(vit, [""], templates)  # [1, D]
  feats = clip_ref.surgery_encode(vit.visual, x, surgery_depth=surgery_depth)  # [1, 1 + N, D]
  cls = feats[:, 0] / feats[:, 0].norm(dim=-1, keepdim=True)
  probs = (100.0 * cls @ text.t()).softmax(dim=-1)[0]
  feats = feats / feats.norm(dim=1, keepdim=True)  # the released token-axis normalisation
  sim = feats @ (text - redundant).t()  # [1, 1 + N, n]
  sm = sim[:, 1:, :]
  sm = (sm - sm.min(1, keepdim=True)[0]) / (sm.max(1, keepdim=True)[0] - sm.min(1, keepdim=True)[0])
  side = int(sm.shape[1] ** 0.5)
  sm = sm.reshape(sm.shape[0], side, side, -1).permute(0, 3, 1, 2)
  sm = F.interpolate(sm, (hh, ww), mode="bilinear").permute(0, 2, 3, 1)[0]  # [H, W, n]

  w, h = pil.size
  short, long = min(w, h), max(w, h)
  new = (boundary_size, int(boundary_size * long / short))
  size = new if w <= h else (new[1], new[0])
  xb = _to_tensor(pil.resize(size, Image.BICUBIC) if size != pil.size else pil)
  fmap = clip_ref.resnet_stages(resnet.visual, xb)[3][0].permute(1, 2, 0).numpy()  # [h, w, C]
  gh, gw = fmap.shape[:2]
  labels, boxes = [], []
  for c in range(len(names)):
    a = sm[..., c]
    t = activation_factor * a.mean()
    small = F.interpolate(a[None, None], (gh, gw), mode="nearest")[0, 0]
    act = (small > t).numpy()
    lab, _ = zip_discover.discover_reference(fmap, act, k=k, **discover_kwargs)
    labels.append(lab)
    from skimage import measure  # pylint: disable=import-outside-toplevel
    cls_boxes = []
    for prop in measure.regionprops(lab):
      r0, c0, r1, c1 = prop.bbox
      # released quirk: x scaled by H/h, y by W/w
      cls_boxes.append([c0 * hh / gh, r0 * ww / gw, c1 * hh / gh, r1 * ww / gw])
    boxes.append(cls_boxes)
  return {"labels": np.stack(labels), "boxes": boxes, "similarity": sm.numpy(), "probs": probs.numpy()}
