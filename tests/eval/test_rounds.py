"""The self-training report's regression flag: a round whose labels lost more than 0.01 of box or mask AP50 or
AR100 (class-agnostic) against the previous round is named, in metrics.json's round records and in the table."""
from zipjax.eval import rounds
from zipjax.eval.coco import STAT_NAMES


def _eval(r, box_ap50, mask_ap50, box_ar, mask_ar, threshold=None):
  def stats(ap50, ar):
    return {k: (ap50 if k == "AP50" else ar if k == "AR100" else 0.1) for k in STAT_NAMES}
  agn = {"bbox": stats(box_ap50, box_ar), "segm": stats(mask_ap50, mask_ar)}
  return {"round": r, "labels": {"count": 10, "images": 2, "stats": {"added": 1, "kept": 2, "replaced": 3,
                                                                       "unsupported": 4},
                                 "threshold": threshold, "support": None, "agnostic": agn, "class": None},
          "detector": None}


def test_label_regressions_name_the_metrics_that_fell():
  a = _eval(0, 0.60, 0.60, 0.40, 0.40)
  b = _eval(1, 0.595, 0.70, 0.45, 0.38, threshold=0.31)  # box AP50 -0.005 (within 0.01), mask AR100 -0.02
  assert rounds.label_regressions(a, b) == ["mask AR100 0.400 -> 0.380"]
  assert rounds.label_regressions(b, a) == ["mask AP50 0.700 -> 0.600", "box AR100 0.450 -> 0.400"]
  assert rounds.label_regressions(a, a) == []
  recs = rounds.round_records([a, b], [{}, {}], [0.5])
  assert recs[0]["worse"] == [] and recs[1]["worse"] == ["mask AR100 0.400 -> 0.380"]
  assert recs[1]["threshold"] == 0.31  # the threshold the labels were made with (calibrated), not the config's
  headers, rows = rounds._round_table(recs, "labels", "agnostic")
  assert headers[-1] == "vs previous round" and "unsupported" in headers
  assert rows[0][-1] == "" and rows[1][-1] == "WORSE: mask AR100 0.400 -> 0.380"
  assert rows[1][headers.index("unsupported")] == "4"
  assert "box AP50" in headers and "mask AP50" in headers  # box and mask side by side in one row
  assert rows[1][headers.index("box AP50")] == "59.5" and rows[1][headers.index("mask AR100")] == "38.0"
