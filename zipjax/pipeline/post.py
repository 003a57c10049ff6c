"""Host side after the engine's device step: full-size masks, boxes and the per-image result (numpy only).

The device returns, per image, the kept instance slots (`pipeline.step`). Here each kept instance becomes a
full-size mask, one at a time, so host memory holds at most one full-size mask (plus its RLE) whatever the
number of instances:

- with SAM: the low-res logits [l, l] are upsampled to the original size with one composed bilinear weight
  matrix per axis, `R = B(ih -> H) B(l -> T)[:ih]` ([H, l], never cached), `mask = R_y L R_x^T >
  mask_threshold`: SAM's postprocessing (upsample to the T x T frame, crop to the resized image, resize to the
  original) folded into two small matmuls, computed in column chunks of bounded size straight into the
  Fortran (column-major) layout that COCO RLE encodes. The box is the mask's tight box (the prompt box for an
  empty mask), as `pipeline.refine` does;
- without SAM: the instance's feature-grid cells upsampled with torch's legacy nearest rule (exactly the old
  path's masks); the box is the scaled grid box computed on device.

`masks='bool'` returns bool [H, W] arrays (all of an image's masks at once: what `Segmenter.segment` gives
`zipjax segment`); `masks='rle'` returns COCO compressed RLE dicts {'size': [H, W], 'counts': str} with the
mask's `area`, encoding each mask as soon as it exists (the labeller's memory-bounded path).
"""
from __future__ import annotations

import numpy as np

from zipjax.ops.resize import bilinear_taps, nearest_indices

CHUNK_ELEMENTS = 1 << 22  # float32 elements of one upsampling chunk (16 MiB)


def sam_weights(low: int, frame: int, input_size: int, out_size: int) -> np.ndarray:
  """float32 [out_size, low]: low-res -> T frame (first `input_size` rows kept) -> `out_size` (composed)."""
  k0, k1, u0, u1 = bilinear_taps(low, frame)
  k0, k1, u0, u1 = k0[:input_size], k1[:input_size], u0[:input_size], u1[:input_size]
  if input_size == out_size:
    j = np.arange(input_size)
    rows0, rows1, v0, v1 = j, j, np.ones(input_size, np.float64), np.zeros(input_size, np.float64)
  else:
    rows0, rows1, v0, v1 = bilinear_taps(input_size, out_size)
  m = np.zeros((out_size, low), np.float64)
  r = np.arange(out_size)
  for rows, v in ((rows0, v0), (rows1, v1)):
    np.add.at(m, (r, k0[rows]), v.astype(np.float64) * u0[rows])
    np.add.at(m, (r, k1[rows]), v.astype(np.float64) * u1[rows])
  return m.astype(np.float32)


def sam_mask_t(logits: np.ndarray, wy: np.ndarray, wx: np.ndarray, threshold: float) -> np.ndarray:
  """Full-size mask of low-res logits, transposed: bool [W, H] C-order (= [H, W] in Fortran order).

  Args:
    logits: float32 [l, l].
    wy: float32 [H, l] (`sam_weights` for the rows), wx: float32 [W, l].
    threshold: logit threshold.
  """
  hh, ww = wy.shape[0], wx.shape[0]
  a_t = (wy @ logits.astype(np.float32)).T.copy()  # [l, H]
  out = np.empty((ww, hh), bool)
  step = max(1, CHUNK_ELEMENTS // max(hh, 1))
  for s in range(0, ww, step):
    np.greater(wx[s:s + step] @ a_t, threshold, out=out[s:s + step])  # [chunk, H]
  return out


def nearest_mask_t(cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """bool [h, w] grid mask -> legacy-nearest upsampled, transposed: bool [W, H] C-order."""
  hh, ww = size
  h, w = cells.shape
  return np.ascontiguousarray(cells.T[nearest_indices(w, ww)][:, nearest_indices(h, hh)])  # [W, H]


def box_of(mask_t: np.ndarray):
  """(x0, y0, x1, y1) tight box (exclusive max) of a [W, H] transposed mask, or None when empty."""
  cols = np.flatnonzero(mask_t.any(axis=1))  # x
  if cols.size == 0:
    return None
  rows = np.flatnonzero(mask_t.any(axis=0))  # y
  return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _rle(mask_t: np.ndarray) -> dict:
  from pycocotools import mask as mask_utils  # pylint: disable=import-outside-toplevel
  rle = mask_utils.encode(mask_t.view(np.uint8).T)  # [H, W] Fortran-ordered uint8 view
  return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def postprocess(out: dict, size: tuple[int, int], *, sam_frame: int = 0, sam_size=None,
                mask_threshold: float = 0.0, masks: str = "bool") -> dict:
  """One image's step outputs (numpy, batch axis removed) -> the engine's result dict.

  Args:
    out: the step's per-image outputs (`pipeline.step` module docstring).
    size: original (H, W).
    sam_frame: SAM input side T (0 = no SAM).
    sam_size: (ih, iw) of the SAM input before padding.
    mask_threshold: SAM logit threshold.
    masks: 'bool' or 'rle'.

  Returns:
    {instances: [{category, score, box, mask (+ area with RLE)}] by decreasing score, probs float32 [n],
    present int [k], labels int32 [k, h, w], grid (h, w), dropped int}.
  """
  if masks not in ("bool", "rle"):
    raise ValueError(f"masks must be 'bool' or 'rle', got {masks!r}")
  hh, ww = size
  present_valid = np.asarray(out["present_valid"], bool)
  k = int(present_valid.sum())
  labels = np.asarray(out["labels"])[:k]
  result = {"instances": [], "probs": np.asarray(out["probs"], np.float32),
            "present": np.asarray(out["present"])[:k].astype(np.int64), "labels": labels,
            "grid": tuple(int(v) for v in np.asarray(out["labels"]).shape[1:]), "dropped": int(out["dropped"])}
  wy = wx = None
  if sam_frame:
    low = np.asarray(out["keep_logits"]).shape[-1]
    wy = sam_weights(low, sam_frame, int(sam_size[0]), hh)
    wx = sam_weights(low, sam_frame, int(sam_size[1]), ww)
  for j in np.flatnonzero(np.asarray(out["keep_valid"])):
    box = [float(v) for v in np.asarray(out["keep_box"][j], np.float32)]
    if sam_frame:
      mask_t = sam_mask_t(np.asarray(out["keep_logits"][j]), wy, wx, mask_threshold)
      tight = box_of(mask_t)
      box = tight if tight is not None else box
    else:
      slot, lab = int(out["keep_slot"][j]), int(out["keep_label"][j])
      mask_t = nearest_mask_t(labels[slot] == lab, size)
    inst = {"category": int(out["keep_category"][j]), "score": float(out["keep_score"][j]), "box": box}
    if masks == "rle":
      inst["mask"] = _rle(mask_t)
      inst["area"] = int(np.count_nonzero(mask_t))
    else:
      inst["mask"] = mask_t.T
    del mask_t
    result["instances"].append(inst)
  return result


__all__ = ["postprocess", "sam_weights", "sam_mask_t", "nearest_mask_t", "box_of", "CHUNK_ELEMENTS"]
