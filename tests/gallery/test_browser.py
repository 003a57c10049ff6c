"""The gallery in a real browser: headless Chromium (Debian's `chromium` package) opens the site from file://,
driven over the DevTools protocol (tests/gallery/cdp.py). Clicking a class filter changes the visible
thumbnails to exactly the images of that class; the other filters, paging and the errors view do what they say;
an instance toggle hides exactly that instance's pixels (screenshots before and after differ only inside its
drawn extent, and there by the alpha blend of its colour); the JavaScript RLE decoder equals pycocotools.

Skipped, with the reason, when no Chromium is installed (`apt-get install -y chromium`; see README)."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.gallery import synth
from tests.gallery.cdp import Browser, find_chromium
from zipjax.gallery.build import build_gallery

if find_chromium() is None:
  pytest.skip("no Chromium installed: `apt-get install -y chromium` (Debian) to run the browser tests",
              allow_module_level=True)

W, H = 1280, 1000
ALPHA = 115 / 255  # gallery.js mask alpha


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  s = synth.make_run(tmp_path_factory.mktemp("browser"), n_images=30, with_gt=True, missing=("images/img_00009.png",))
  res = build_gallery(s["run"], gt=s["gt_path"], workers=2)
  return s, os.path.dirname(res.index), res


@pytest.fixture(scope="module")
def browser():
  with Browser() as br:
    yield br


def shot(br) -> np.ndarray:
  br.scroll_to(0, 0)
  return np.asarray(Image.open(io.BytesIO(br.screenshot())).convert("RGB"), np.int64)  # [H, W, 3]


def visible_ids(br) -> list:
  return br.eval("Array.from(document.querySelectorAll('#grid figure.thumb:not([hidden])'))"
                 ".map(f => +f.dataset.id)")


def test_index_filters(site, browser):
  s, out, _ = site
  ds = s["dataset"]
  per_image = {im["id"]: [a for a in ds["annotations"] if a["image_id"] == im["id"]] for im in ds["images"]}
  browser.open("file://" + os.path.join(out, "index.html"), W, H)
  all_ids = [im["id"] for im in ds["images"]]
  assert visible_ids(browser) == all_ids
  before = shot(browser)

  browser.click("button.cls[data-cat='1']")  # the class filter: class 'Äpfel 🍎'
  expect = [i for i in all_ids if any(a["category_id"] == 2 for a in per_image[i])]
  assert 0 < len(expect) < len(all_ids)
  assert visible_ids(browser) == expect
  assert browser.eval("document.getElementById('f-class').value") == "1"
  assert browser.eval("document.querySelector(\"tr[data-cat='1']\").classList.contains('sel')")
  assert "cls=1" in browser.eval("location.hash")
  after = shot(browser)
  assert before.shape == after.shape == (H, W, 3)
  grid_top = int(browser.rect("#grid")["y"])
  assert (before[grid_top:] != after[grid_top:]).any()  # the thumbnails changed
  assert browser.eval("document.getElementById('f-count').textContent") == f"{len(expect)} of 30 images match"

  browser.click("button.cls[data-cat='1']")  # clicking the selected class again clears the filter
  assert visible_ids(browser) == all_ids

  browser.click("#f-empty")
  assert visible_ids(browser) == [i for i in all_ids if not per_image[i]]
  assert browser.eval("document.getElementById('f-class').disabled")
  browser.click("#f-reset")
  assert visible_ids(browser) == all_ids

  browser.eval("(() => { const e = document.getElementById('f-min'); e.value = '0.8'; "
               "e.dispatchEvent(new Event('change')); })()")
  assert visible_ids(browser) == [i for i in all_ids if any(round(a["score"], 4) >= 0.8 for a in per_image[i])]
  browser.click("#f-reset")

  browser.eval("(() => { const e = document.getElementById('f-size'); e.value = '24'; "
               "e.dispatchEvent(new Event('change')); })()")
  assert visible_ids(browser) == all_ids[:24]
  browser.click(".pager .next")
  assert visible_ids(browser) == all_ids[24:]
  assert browser.eval("document.querySelector('.pager .info').textContent") == "page 2 of 2"

  browser.click("#tab-errors")
  assert browser.eval("document.getElementById('errors').offsetParent !== null")
  assert browser.eval("document.getElementById('grid').offsetParent === null")
  assert browser.eval("document.querySelectorAll('#errors tbody tr').length") == len(s["errors"])
  browser.click("#tab-images")
  browser.click("#f-reset")


def test_instance_toggle_hides_exactly_that_instance(site, browser):
  s, out, _ = site
  ds = s["dataset"]
  im = next(i for i in ds["images"] if sum(a["image_id"] == i["id"] for a in ds["annotations"]) >= 3)
  anns = [a for a in ds["annotations"] if a["image_id"] == im["id"]]
  browser.open("file://" + os.path.join(out, "pages", f"{im['id']}.html"), W, H)
  assert browser.eval("document.querySelectorAll(\"canvas.layer[data-set='pred']\").length") == len(anns)
  on = shot(browser)
  stage = browser.rect("#stage-pred")
  cw = browser.eval("document.querySelector(\"canvas.layer[data-set='pred'][data-k='0']\").width")
  ext = [float(v) for v in browser.eval(
      "document.querySelector(\"canvas.layer[data-set='pred'][data-k='0']\").dataset.extent").split(",")]
  k = stage["width"] / cw  # canvas px -> CSS px
  box = [stage["x"] + ext[0] * k, stage["y"] + ext[1] * k, stage["x"] + ext[2] * k, stage["y"] + ext[3] * k]

  browser.click("input.toggle[data-set='pred'][data-k='0']")
  assert browser.eval("document.querySelector(\"canvas.layer[data-set='pred'][data-k='0']\").hidden")
  assert not browser.eval("document.querySelector(\"canvas.layer[data-set='pred'][data-k='1']\").hidden")
  off = shot(browser)
  changed = (on != off).any(-1)  # [H, W]
  ys, xs = np.nonzero(changed)
  assert len(ys) > 200
  tick = browser.rect("input.toggle[data-set='pred'][data-k='0']")
  in_box = (xs >= box[0] - 2) & (xs <= box[2] + 2) & (ys >= box[1] - 2) & (ys <= box[3] + 2)
  in_tick = (xs >= tick["x"] - 2) & (xs <= tick["x"] + tick["width"] + 2) & (ys >= tick["y"] - 2) & (
      ys <= tick["y"] + tick["height"] + 2)
  assert (in_box | in_tick).all(), "pixels outside the instance's extent changed"
  assert in_box.sum() > 200

  # inside the mask (away from its edges, its label and the other instances) the pixels are the alpha blend
  m = mask_utils.decode({"size": anns[0]["segmentation"]["size"],
                         "counts": anns[0]["segmentation"]["counts"].encode()}).astype(bool)
  others = np.zeros_like(m)
  for a in anns[1:]:
    x, y, w, h = (int(round(v)) for v in a["bbox"])
    others[max(0, y - 2):y + h + 2, max(0, x - 2):x + w + 2] = True
  x0, y0, bw, bh = anns[0]["bbox"]
  sx, sy = im["width"] / stage["width"], im["height"] / stage["height"]
  yy, xx = np.mgrid[int(stage["y"]) + 1:int(stage["y"] + stage["height"]) - 1,
                    int(stage["x"]) + 1:int(stage["x"] + stage["width"]) - 1]
  iy = ((yy + 0.5 - stage["y"]) * sy).astype(int)
  ix = ((xx + 0.5 - stage["x"]) * sx).astype(int)
  inner = np.ones_like(m)
  for dy in (-2, -1, 0, 1, 2):
    for dx in (-2, -1, 0, 1, 2):
      inner &= np.roll(m, (dy, dx), (0, 1))
  sel = inner[iy, ix] & ~others[iy, ix] & (iy > y0 + bh * 0.35) & (iy < y0 + bh - 3) & (ix > x0 + 3) & (
      ix < x0 + bw - 3)
  assert sel.sum() > 50
  colour = np.array([int(c, 16) for c in (lambda h: (h[1:3], h[3:5], h[5:7]))(
      browser.eval("JSON.parse(document.getElementById('page-data').textContent).pred[0].color"))])
  got = on[yy[sel], xx[sel]].astype(float)
  want = off[yy[sel], xx[sel]] * (1 - ALPHA) + colour * ALPHA
  assert np.abs(got - want).mean() < 2.0 and np.abs(got - want).max() <= 4

  browser.click("input.toggle[data-set='pred'][data-k='0']")
  again = shot(browser)
  ys, xs = np.nonzero((again != on).any(-1))
  assert ((xs >= tick["x"] - 2) & (xs <= tick["x"] + tick["width"] + 2)).all()  # only the focus ring may differ


def test_missing_image_page_draws_on_a_blank_canvas(site, browser):
  s, out, _ = site
  browser.open("file://" + os.path.join(out, "pages", "9.html"), W, H)
  assert "image missing" in browser.eval("document.querySelector('.warn').textContent")
  assert browser.eval("document.querySelectorAll('#stage-pred img').length") == 0
  n = sum(a["image_id"] == 9 for a in s["dataset"]["annotations"])
  assert browser.eval("document.querySelectorAll(\"canvas.layer[data-set='pred']\").length") == n


def test_javascript_rle_decoder_equals_pycocotools(site, browser):
  _, out, _ = site
  browser.open("file://" + os.path.join(out, "index.html"), W, H)
  rng = np.random.default_rng(0)
  masks = [np.zeros((7, 9), bool), np.ones((7, 9), bool), rng.random((31, 17)) < 0.5,
           synth.ellipse(300, 400, 150, 200, 140, 190), synth.ellipse(300, 400, 20, 30, 10, 350)]
  masks[3][:, :5] = True
  for m in masks:
    r = synth.rle(m)
    got = browser.eval(f"Array.from(zipjaxGallery.decodeMask({json.dumps(r)}).slice(0, {m.size})).join('')")
    ref = mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}).flatten(order="F")
    assert got == "".join(map(str, ref.tolist()))
