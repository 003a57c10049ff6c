"""Published numbers shown beside our own for context (zip_method.md section 6).

All are class-agnostic results on COCO val2017, in percent, as published. They are not reproduced by zipjax
and are only comparable to a run evaluated class-agnostically on the full COCO val2017.
"""

ANCHOR_SETTING = "published, COCO val2017, class-agnostic"
ANCHOR_TAG = "[published]"

# name -> {iou type -> {metric -> percent}}
PUBLISHED_ANCHORS = (
    {"name": "MaskCut", "bbox": {}, "segm": {"AP": 2.2}},
    {"name": "CutLER", "bbox": {"AP50": 21.9}, "segm": {"AP": 9.2}},
    {"name": "FreeSOLO", "bbox": {}, "segm": {"AP": 4.3}},
)

ANCHOR_NOTES = (
    "[published] rows are class-agnostic COCO val2017 numbers in percent, quoted for context only "
    "(zip_method.md section 6); they are comparable only to a class-agnostic run on the full val2017.",
    "Zip's abstract reports +12.5 mask AP over SAM on COCO (a difference, not an absolute number).",
)
