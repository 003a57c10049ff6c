"""SAM refinement (chunked, padded box prompts; multimask selection) against per-box calls of the public SAM
API, the geometric score, and the selection rule (min score, per-class mask NMS, top-k) against NumPy."""
import ml_collections
import numpy as np

from zipjax import sam as sam_lib
from zipjax.models.sam.sam import SamConfig
from zipjax.pipeline import refine

TINY = dict(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
            img_size=256, window_size=4, prompt_embed_dim=32, mask_in_chans=4, decoder_depth=1,
            decoder_num_heads=2, decoder_mlp_dim=64, iou_head_hidden_dim=32)


def test_sam_masks_match_per_box_calls():
  sam = sam_lib.SamModel.random(SamConfig.from_dict(TINY), seed=1)
  img = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
  boxes = np.array([[5, 5, 60, 40], [30, 20, 120, 85], [0, 0, 130, 90], [70, 10, 100, 50], [10, 50, 40, 88]],
                   np.float32)
  for multimask in (False, True):
    cfg = ml_collections.ConfigDict({"max_boxes": 2, "multimask": multimask, "mask_threshold": 0.0})
    masks, ious, out_boxes = refine.sam_masks(sam, img, boxes, cfg)  # 3 chunks, the last one padded
    pixels, input_size, original = sam_lib.preprocess_image(img, 256)
    emb = sam.image_embeddings(pixels[None])
    for i, b in enumerate(boxes):
      logits, iou = sam.predict_boxes(emb, sam_lib.apply_boxes(b[None], original, 256)[None], multimask=multimask)
      k = int(np.argmax(np.asarray(iou)[0, 0]))
      want = np.asarray(sam_lib.postprocess_masks(logits[0, 0, k:k + 1], input_size, original, 256))[0]
      np.testing.assert_array_equal(masks[i], want)
      np.testing.assert_allclose(ious[i], np.asarray(iou)[0, 0, k], rtol=1e-5, atol=1e-6)
      if want.any():
        ys, xs = np.nonzero(want)
        np.testing.assert_array_equal(out_boxes[i], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
      else:
        np.testing.assert_array_equal(out_boxes[i], b)


def test_geometric_score():
  np.testing.assert_allclose(refine.geometric_score([0.25, 0.81, 0.5], [1.0, 0.49, 1.7]),
                             [0.5, 0.63, np.sqrt(0.5)], rtol=1e-6)


def _numpy_select(cats, scores, masks, min_score, nms, thr, top):
  keep = [i for i in range(len(scores)) if scores[i] >= min_score]
  if nms:
    kept = []
    for i in sorted(keep, key=lambda i: (-scores[i], i)):
      ok = True
      for j in kept:
        if cats[j] != cats[i]:
          continue
        inter = np.logical_and(masks[i], masks[j]).sum()
        union = np.logical_or(masks[i], masks[j]).sum()
        if union and inter / union > thr:
          ok = False
      if ok:
        kept.append(i)
    keep = kept
  return sorted(keep, key=lambda i: (-scores[i], i))[:top]


def test_select_matches_numpy():
  rng = np.random.default_rng(3)
  for trial in range(6):
    m = int(rng.integers(1, 14))
    cats = rng.integers(0, 3, m)
    scores = np.round(rng.random(m), 1).astype(np.float32)  # ties on purpose
    masks = []
    for _ in range(m):
      mk = np.zeros((24, 24), bool)
      r, c = rng.integers(0, 14, 2)
      mk[r:r + int(rng.integers(4, 10)), c:c + int(rng.integers(4, 10))] = True
      masks.append(mk)
    for nms in (False, True):
      sc = ml_collections.ConfigDict({"min_score": 0.2, "nms": nms, "nms_threshold": 0.3, "max_per_image": 5})
      got = refine.select(cats, scores, masks, sc).tolist()
      assert got == _numpy_select(cats, scores, masks, 0.2, nms, 0.3, 5), trial
