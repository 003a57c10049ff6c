"""The host oracle of the `zip` preset (tests/reference/zip_host.py): its SAM refinement (chunked, padded box
prompts; multimask selection) against per-box calls of the public SAM API, and the geometric score (its selection rule, `select_numpy`, is the oracle of tests/pipeline/test_step.py)."""
import ml_collections
import numpy as np

from tests.reference import zip_host
from zipjax import sam as sam_lib
from zipjax.models.sam_net.model import SamConfig

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
    masks, ious, out_boxes = zip_host.sam_masks(sam, img, boxes, cfg)  # 3 chunks, the last one padded
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
  np.testing.assert_allclose(zip_host.geometric_score([0.25, 0.81, 0.5], [1.0, 0.49, 1.7]),
                             [0.5, 0.63, np.sqrt(0.5)], rtol=1e-6)
