"""Host side after the engine's device step: full-size masks, boxes and the per-image result (numpy only).

The device returns, per image, the kept instance slots (`pipeline.step`). Here each kept instance becomes a
full-size mask, one at a time, so host memory holds at most one full-size mask (plus its RLE) whatever the
number of instances:

- with SAM: the low-res logits [l, l] go through SAM's postprocessing (bilinear upsampling to the T x T
  frame, crop to the resized image, bilinear resize to the original size, `> mask_threshold`; SAM 2: one
  bilinear resize straight to the original size) as separable
  two-tap passes (weights never cached), the last one in column chunks of bounded size, straight into the
  Fortran (column-major) layout that COCO RLE encodes. The box is the mask's tight box (the prompt box for an
  empty mask);
- without SAM: the instance's feature-grid cells upsampled with torch's legacy nearest rule (exactly the
  released code's masks); the box is the scaled grid box computed on device.

`masks='bool'` returns bool [H, W] arrays (all of an image's masks at once: what `Engine.segment` gives
`zipjax segment`); `masks='rle'` returns COCO compressed RLE dicts {'size': [H, W], 'counts': str} with the
mask's `area`, encoding each mask as soon as it exists (the labeller's memory-bounded path).
"""
from __future__ import annotations

import numpy as np

from zipjax.io.geometry import encode_rle
from zipjax.ops.resize import bilinear_taps, nearest_indices

CHUNK_ELEMENTS = 1 << 22  # float32 elements of one upsampling chunk (16 MiB)


def sam_plan(low: int, frame: int, sam_size, size, direct: bool = False) -> dict:
  """Bilinear taps of SAM's mask postprocessing for one image (O(H + W), never cached).

  Args:
    low: low-res logits side l.
    frame: SAM input side T.
    sam_size: (ih, iw) of the resized image inside the frame.
    size: original (H, W).
    direct: SAM 2's postprocessing, the logits resized straight to (H, W) (`SAM2Transforms`).

  Returns:
    {'frame_rows', 'frame_cols': taps l -> T cut to ih / iw; 'rows', 'cols': taps ih -> H / iw -> W, or None
    when equal}, each taps = (i0, i1, w0, w1) as `ops.resize.bilinear_taps`. With `direct`: frame_rows l -> H,
    cols l -> W, the others None.
  """
  if direct:
    return {"frame_rows": bilinear_taps(low, size[0]), "frame_cols": None, "rows": None,
            "cols": bilinear_taps(low, size[1])}
  (ih, iw), (hh, ww) = (int(sam_size[0]), int(sam_size[1])), size
  cut = lambda t, n: tuple(a[:n] for a in t)  # noqa: E731
  return {"frame_rows": cut(bilinear_taps(low, frame), ih), "frame_cols": cut(bilinear_taps(low, frame), iw),
          "rows": bilinear_taps(ih, hh) if ih != hh else None, "cols": bilinear_taps(iw, ww) if iw != ww else None}


def _taps(x: np.ndarray, taps) -> np.ndarray:
  """Bilinear resize of the first axis of x: out[i] = w0[i] * x[i0[i]] + w1[i] * x[i1[i]] (float32)."""
  i0, i1, w0, w1 = taps
  return w0[:, None] * x[i0] + w1[:, None] * x[i1]


def sam_mask_t(logits: np.ndarray, plan: dict, threshold: float) -> np.ndarray:
  """Full-size mask of low-res logits, transposed: bool [W, H] C-order (= [H, W] in Fortran order).

  SAM's postprocessing in its own order (upsample to the frame, crop, resize to the original, each a separable
  two-tap bilinear pass in float32), with gathers and multiply-adds only (no BLAS: tiny multi-threaded matmuls
  stall on a busy host); the last, full-size pass runs in column chunks of at most `CHUNK_ELEMENTS` floats.

  Args:
    logits: float32 [l, l].
    plan: `sam_plan` of the image.
    threshold: logit threshold.
  """
  x = _taps(np.asarray(logits, np.float32), plan["frame_rows"])  # [ih, l]
  x = _taps(x.T, plan["frame_cols"]) if plan["frame_cols"] is not None else x.T  # [iw, ih] ([l, H] direct)
  if plan["rows"] is not None:
    x = _taps(x.T, plan["rows"]).T  # [iw, H]
  x = np.ascontiguousarray(x)
  if plan["cols"] is None:
    return x > threshold
  ww, hh = plan["cols"][0].shape[0], x.shape[1]
  out = np.empty((ww, hh), bool)
  step = max(1, CHUNK_ELEMENTS // max(hh, 1))
  for s in range(0, ww, step):
    np.greater(_taps(x, tuple(a[s:s + step] for a in plan["cols"])), threshold, out=out[s:s + step])
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


def postprocess(out: dict, size: tuple[int, int], *, sam_frame: int = 0, sam_size=None,
                mask_threshold: float = 0.0, masks: str = "bool", sam_direct: bool = False) -> dict:
  """One image's step outputs (numpy, batch axis removed) -> the engine's result dict.

  Args:
    out: the step's per-image outputs (`pipeline.step` module docstring).
    size: original (H, W).
    sam_frame: SAM input side T (0 = no SAM).
    sam_size: (ih, iw) of the SAM input before padding.
    mask_threshold: SAM logit threshold.
    masks: 'bool' or 'rle'.
    sam_direct: SAM 2's mask postprocessing (`sam_plan`).

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
  plan = None
  if sam_frame:
    plan = sam_plan(np.asarray(out["keep_logits"]).shape[-1], sam_frame, sam_size, size, direct=sam_direct)
  for j in np.flatnonzero(np.asarray(out["keep_valid"])):
    box = [float(v) for v in np.asarray(out["keep_box"][j], np.float32)]
    if sam_frame:
      mask_t = sam_mask_t(np.asarray(out["keep_logits"][j]), plan, mask_threshold)
      tight = box_of(mask_t)
      box = tight if tight is not None else box
    else:
      slot, lab = int(out["keep_slot"][j]), int(out["keep_label"][j])
      mask_t = nearest_mask_t(labels[slot] == lab, size)
    inst = {"category": int(out["keep_category"][j]), "score": float(out["keep_score"][j]), "box": box}
    if masks == "rle":
      inst["mask"] = encode_rle(mask_t.T)  # [H, W], Fortran-ordered: not copied
      inst["area"] = int(np.count_nonzero(mask_t))
    else:
      inst["mask"] = mask_t.T
    del mask_t
    result["instances"].append(inst)
  return result


__all__ = ["postprocess", "sam_plan", "sam_mask_t", "nearest_mask_t", "box_of", "CHUNK_ELEMENTS"]
