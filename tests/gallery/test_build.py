"""build_gallery on synthetic output folders (images + annotations.json written by the test, no models):
every image page linked, counts and histograms equal to annotations.json, filters and errors present, masks on
the pages equal the annotations, ground-truth match counts equal a dense NumPy computation, thumbnails drawn
where the masks are, reused on re-runs (files untouched), deterministic sampling, work bounded by the images
shown, clear errors, kill-safety."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.gallery import synth
from tests.gallery.dom import parse
from tests.gallery.test_match import reference
from zipjax.errors import InputError
from zipjax.gallery import render
from zipjax.gallery.build import build_gallery, image_roots, resolve_image, sample_images
from zipjax.gallery.source import CocoIndex

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MISSING = "images/img_00007.png"


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  s = synth.make_run(tmp_path_factory.mktemp("gallery"), n_images=14, missing=(MISSING,), with_gt=True)
  res = build_gallery(s["run"], gt=s["gt_path"], max_images=None, workers=2)
  out = os.path.join(s["run"], "gallery")
  return s, res, out, parse(_read(os.path.join(out, "index.html")))


def test_every_image_has_a_page_linked_from_the_index(built):
  s, res, out, doc = built
  ids = [im["id"] for im in s["dataset"]["images"]]
  figs = doc.find_all("figure", cls="thumb")
  assert [int(f.attrs["data-id"]) for f in figs] == ids
  hrefs = [f.find("a").attrs["href"] for f in figs]
  assert hrefs == [f"pages/{i}.html" for i in ids]
  assert sorted(os.listdir(os.path.join(out, "pages"))) == sorted(h.split("/")[1] for h in hrefs)
  for f in figs:
    assert os.path.isfile(os.path.join(out, f.find("img").attrs["src"]))
  # the previous/next chain of the pages visits every image once, in order
  seen, page = [], hrefs[0].split("/")[1]
  while page:
    p = parse(_read(os.path.join(out, "pages", page)))
    seen.append(int(page.split(".")[0]))
    assert p.find("a", href="../index.html") is not None
    for img in p.find_all("img"):
      assert os.path.isfile(os.path.join(out, "pages", img.attrs["src"]))
    nxt = p.find("a", rel="next")
    page = nxt.attrs["href"] if nxt else None
  assert seen == ids
  assert (res.shown, res.total, res.missing) == (14, 14, 1)
  assert res.url == "file://" + os.path.join(out, "index.html") and os.path.isfile(res.index)


def test_class_counts_and_histograms_equal_annotations(built):
  s, _, _, doc = built
  anns = s["dataset"]["annotations"]
  rows = [r for r in doc.by_id("classes").find_all("tr") if "data-cat" in r.attrs]
  assert len(rows) == len(synth.CLASSES)
  for pos, (row, name) in enumerate(zip(rows, synth.CLASSES)):
    mine = [a for a in anns if a["category_id"] == pos + 1]
    cells = row.find_all("td")
    assert cells[0].text == name
    assert int(cells[1].text) == len(mine)
    assert int(cells[2].text) == len({a["image_id"] for a in mine})
    assert cells[3].text == f"{np.mean([a['score'] for a in mine]):.3f}"
    bars = [int(b.attrs["data-count"]) for b in cells[4].find_all("rect", cls="bar")]
    np.testing.assert_array_equal(bars, np.histogram([a["score"] for a in mine], bins=20, range=(0, 1))[0])
  summary = doc.by_id("summary").text
  assert "14 image(s)" in summary and f"{len(anns)} instance(s)" in summary and "2 skipped file(s)" in summary
  n_with = len({a["image_id"] for a in anns})
  assert f"{n_with} with instances" in summary


def test_filters_and_errors_are_present(built):
  s, _, _, doc = built
  opts = doc.by_id("f-class").find_all("option")
  assert [(o.attrs["value"], o.text) for o in opts] == [("", "all classes")] + [
      (str(i), n) for i, n in enumerate(synth.CLASSES)]
  assert doc.by_id("f-min").attrs["type"] == "number" and doc.by_id("f-max").attrs["type"] == "number"
  assert doc.by_id("f-empty").attrs["type"] == "checkbox"
  sorts = [o.attrs["value"] for o in doc.by_id("f-sort").find_all("option")]
  assert "fp" in sorts and "fn" in sorts  # with --gt
  assert len(doc.find_all("button", cls="cls")) == len(synth.CLASSES)
  assert doc.by_id("tab-errors").text == "Errors (2)"
  rows = doc.by_id("errors").find("tbody").find_all("tr")
  assert [[td.text for td in r.find_all("td")] for r in rows] == [[e["path"], e["reason"]] for e in s["errors"]]
  assert doc.find("script", src="static/gallery.js") is not None
  for text in (_read(os.path.join(built[2], "index.html")),):
    assert "http://" not in text and "https://" not in text  # nothing to fetch


def test_figure_data_equal_annotations(built):
  s, _, _, doc = built
  by_image = {}
  for a in s["dataset"]["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)
  for f in doc.find_all("figure", cls="thumb"):
    mine = by_image.get(int(f.attrs["data-id"]), [])
    assert int(f.attrs["data-n"]) == len(mine)
    inst = [t.split(":") for t in f.attrs["data-inst"].split()]
    assert [(int(c), float(v)) for c, v in inst] == [(a["category_id"] - 1, round(a["score"], 4)) for a in mine]


def test_pages_show_every_instance_with_its_mask(built):
  s, _, out, _ = built
  by_image = {}
  for a in s["dataset"]["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)
  for im in s["dataset"]["images"]:
    p = parse(_read(os.path.join(out, "pages", f"{im['id']}.html")))
    mine = by_image.get(im["id"], [])
    rows = [r for r in p.by_id("table-pred").find("tbody").find_all("tr") if "data-k" in r.attrs]
    assert len(rows) == len(mine)
    for r, a in zip(rows, mine):
      cells = [td.text for td in r.find_all("td")]
      assert cells[2] == synth.CLASSES[a["category_id"] - 1]
      assert cells[3] == f"{a['score']:.3f}"
      assert float(cells[4]) == a["area"]
      assert [float(v) for v in cells[5].split(",")] == a["bbox"]
      assert r.find("input", cls="toggle").attrs["data-k"] == r.attrs["data-k"]
    data = json.loads(p.by_id("page-data").text)
    assert (data["width"], data["height"]) == (im["width"], im["height"])
    assert [d["rle"] for d in data["pred"]] == [a["segmentation"] for a in mine]
    assert [d["box"] for d in data["pred"]] == [a["bbox"] for a in mine]
    stage = p.by_id("stage-pred")
    if im["file_name"] == MISSING:
      assert stage.find("img") is None and "image missing" in stage.text
      assert any("image missing" in w.text for w in p.find_all("p", cls="warn"))
    else:
      img = stage.find("img")
      with Image.open(os.path.join(out, "pages", img.attrs["src"])) as d:
        assert d.size == (im["width"], im["height"]) == (int(img.attrs["width"]), int(img.attrs["height"]))


def test_ground_truth_counts_equal_a_numpy_computation(built):
  s, _, out, doc = built
  gt = s["gt"]
  gt_by_name = {im["file_name"]: im["id"] for im in gt["images"]}
  names = {c["id"]: c["name"].casefold() for c in gt["categories"]}
  totals = np.zeros(3, int)
  figs = {int(f.attrs["data-id"]): f for f in doc.find_all("figure", cls="thumb")}
  for im in s["dataset"]["images"]:
    preds = [a for a in s["dataset"]["annotations"] if a["image_id"] == im["id"]]
    gid = gt_by_name[im["file_name"]]
    gts = [a for a in gt["annotations"] if a["image_id"] == gid]
    dec = lambda seg: mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
    pred_status, fn = reference([dec(a["segmentation"]) for a in preds],
                                [synth.CLASSES[a["category_id"] - 1].casefold() for a in preds],
                                [a["score"] for a in preds], [dec(g["segmentation"]) for g in gts],
                                [names[g["category_id"]] for g in gts], [False] * len(gts))
    tp, fp = sum(p[0] == "tp" for p in pred_status), sum(p[0] == "fp" for p in pred_status)
    f = figs[im["id"]]
    assert (int(f.attrs["data-tp"]), int(f.attrs["data-fp"]), int(f.attrs["data-fn"])) == (tp, fp, fn)
    page = parse(_read(os.path.join(out, "pages", f"{im['id']}.html")))
    counts = page.by_id("gt-counts").text
    assert re.search(rf"\b{tp} true positive", counts) and re.search(rf"\b{fn} miss", counts)
    assert re.search(rf"\b{fp} false positive", counts)
    gt_rows = [r for r in page.by_id("table-gt").find("tbody").find_all("tr") if "data-k" in r.attrs]
    assert len(gt_rows) == len(gts)
    assert sum("miss" == r.find_all("td")[-1].text for r in gt_rows) == fn
    assert json.loads(page.by_id("page-data").text)["gt"][0]["rle"] == gts[0]["segmentation"] if gts else True
    totals += [tp, fp, fn]
  assert [int(doc.by_id(k).text) for k in ("gt-tp", "gt-fp", "gt-fn")] == totals.tolist()
  assert (totals > 0).all()


def _one_image_run(base, score=0.9, pixel=128):
  """A 64 x 96 flat gray image with one rectangle instance at rows 20..49, columns 30..79."""
  os.makedirs(os.path.join(base, "run"), exist_ok=True)
  Image.fromarray(np.full((64, 96, 3), pixel, np.uint8)).save(os.path.join(base, "flat.png"))
  m = np.zeros((64, 96), bool)
  m[20:50, 30:80] = True
  ds = {"info": {"images_root": base},
        "images": [{"id": 1, "file_name": os.path.join(base, "flat.png"), "height": 64, "width": 96}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": synth.rle(m),
                         "bbox": [30.0, 20.0, 50.0, 30.0], "area": float(m.sum()), "score": score, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "box"}]}
  with open(os.path.join(base, "run", "annotations.json"), "w") as f:
    json.dump(ds, f)
  return os.path.join(base, "run")


def test_thumbnail_pixels_show_the_mask(tmp_path):
  run = _one_image_run(str(tmp_path))
  build_gallery(run, thumb_size=96)
  (thumb,) = os.listdir(os.path.join(run, "gallery", "thumbs"))
  t = np.asarray(Image.open(os.path.join(run, "gallery", "thumbs", thumb)).convert("RGB"), np.float64)
  assert t.shape == (64, 96, 3)
  colour = np.array(render.class_colour(0), np.float64)
  inside = t[36:46, 40:70]  # below the label, inside the box lines
  outside = t[55:62, 5:25]
  np.testing.assert_allclose(inside.mean((0, 1)), 0.55 * 128 + 0.45 * colour, atol=4)  # JPEG: mean of a flat area
  np.testing.assert_allclose(outside.mean((0, 1)), [128, 128, 128], atol=2)


def _mtimes(out):
  return {os.path.join(d, n): os.stat(os.path.join(out, d, n)).st_mtime_ns
          for d in ("thumbs", "images", "pages", "static", ".") for n in os.listdir(os.path.join(out, d))
          if os.path.isfile(os.path.join(out, d, n))}


def test_rebuild_reuses_thumbnails_and_rewrites_nothing_unchanged(tmp_path):
  s = synth.make_run(tmp_path, n_images=9)
  out = os.path.join(s["run"], "gallery")
  first = build_gallery(s["run"], workers=2)
  assert (first.thumbs_rendered, first.thumbs_reused, first.displays_rendered) == (9, 0, 9)
  for path in _mtimes(out):  # age every file so that a rewrite would show
    os.utime(os.path.join(out, path), ns=(10**18, 10**18))
  before = _mtimes(out)
  second = build_gallery(s["run"], workers=2)
  assert (second.thumbs_rendered, second.thumbs_reused, second.displays_rendered, second.displays_reused) == (
      0, 9, 0, 9)
  assert _mtimes(out) == before

  # one annotation changes (image 3) and one image file changes (image 5): exactly their files are redrawn
  ds = s["dataset"]
  next(a for a in ds["annotations"] if a["image_id"] == 3)["score"] = 0.5
  with open(os.path.join(s["run"], "annotations.json"), "w") as f:
    json.dump(ds, f)
  Image.new("RGB", (ds["images"][4]["width"], ds["images"][4]["height"]), (10, 200, 30)).save(
      os.path.join(s["base"], ds["images"][4]["file_name"]))
  third = build_gallery(s["run"], workers=2)
  assert (third.thumbs_rendered, third.displays_rendered) == (2, 1)
  after = _mtimes(out)
  changed = {p for p in after if after[p] != before.get(p)}
  assert len([p for p in changed if p.startswith("thumbs")]) == 2
  assert len([p for p in changed if p.startswith("images")]) == 1
  assert {p for p in changed if p.startswith("pages")} <= {"pages/3.html", "pages/5.html"}
  assert len(os.listdir(os.path.join(out, "thumbs"))) == 9  # the replaced thumbnails were pruned
  assert len(os.listdir(os.path.join(out, "images"))) == 9


def test_sampling_is_deterministic_and_said(tmp_path):
  s = synth.make_run(tmp_path, n_images=40, size=(40, 48), max_instances=2)
  names = [im["file_name"] for im in s["dataset"]["images"]]
  expect = sorted(sorted(names, key=lambda n: hashlib.sha1(n.encode()).digest())[:10], key=names.index)
  build_gallery(s["run"], max_images=10, workers=2)
  doc = parse(_read(os.path.join(s["run"], "gallery", "index.html")))
  shown = [f.find("figcaption").children[0] for f in doc.find_all("figure", cls="thumb")]
  assert shown == expect
  assert "Showing 10 of 40 images" in doc.by_id("sampling").text
  counts = [int(r.find_all("td")[1].text) for r in doc.by_id("classes").find_all("tr") if "data-cat" in r.attrs]
  assert sum(counts) == len(s["dataset"]["annotations"])  # class counts cover the whole run
  # the same file names are chosen whatever the order and ids of the images in the file
  ds = s["dataset"]
  ds["images"] = [dict(im, id=1000 - im["id"]) for im in reversed(ds["images"])]
  ds["annotations"] = [dict(a, image_id=1000 - a["image_id"]) for a in ds["annotations"]]
  with open(os.path.join(s["run"], "annotations.json"), "w") as f:
    json.dump(ds, f)
  with CocoIndex(os.path.join(s["run"], "annotations.json")) as idx:
    again = sorted(idx.images[p]["name"] for p in sample_images(idx.images, 10))
  assert again == sorted(expect)


def test_work_is_bounded_by_the_images_shown(tmp_path, monkeypatch):
  s = synth.make_run(tmp_path, n_images=150, size=(36, 40), max_instances=2)
  from zipjax.io import images as images_io
  calls = {"load": 0, "records": 0}
  load, records = images_io.load_image, CocoIndex.records

  def counting_load(*a, **k):
    calls["load"] += 1
    return load(*a, **k)

  def counting_records(self, i):
    calls["records"] += 1
    return records(self, i)

  monkeypatch.setattr(images_io, "load_image", counting_load)
  monkeypatch.setattr(CocoIndex, "records", counting_records)
  res = build_gallery(s["run"], max_images=5, workers=1)
  assert calls == {"load": 5, "records": 5}
  assert res.shown == 5 and len(os.listdir(os.path.join(s["run"], "gallery", "pages"))) == 5
  calls.update(load=0, records=0)
  build_gallery(s["run"], max_images=5, workers=1)
  assert calls == {"load": 0, "records": 5}  # cached: no image decoded


def test_missing_and_corrupt_inputs_are_clear_errors(tmp_path):
  with pytest.raises(InputError, match="not a folder"):
    build_gallery(tmp_path / "nope")
  (tmp_path / "w" / "round_1").mkdir(parents=True)
  with pytest.raises(InputError, match=r"no annotations.json \(not a zipjax output folder\)$"):
    build_gallery(tmp_path / "w")
  (tmp_path / "w" / "round_1" / "annotations.json").write_text("{}")
  with pytest.raises(InputError, match="output folders below it: .*round_1"):
    build_gallery(tmp_path / "w")
  (tmp_path / "w" / "round_1" / "annotations.json").write_text('{"images": [{"id": 1, "height": 4')
  with pytest.raises(InputError, match="annotations.json: not a valid COCO JSON file: .*truncated"):
    build_gallery(tmp_path / "w" / "round_1")
  run = _one_image_run(str(tmp_path / "one"))
  with pytest.raises(InputError, match="--max-images must be >= 1"):
    build_gallery(run, max_images=0)
  with pytest.raises(InputError, match="--images-root .*: not a folder"):
    build_gallery(run, images_root=str(tmp_path / "nothing"))
  with pytest.raises(InputError, match="gt.json: file not found"):
    build_gallery(run, gt=str(tmp_path / "gt.json"))


def test_bad_optional_files_and_records_are_reported_and_the_build_goes_on(tmp_path):
  run = _one_image_run(str(tmp_path))
  with open(os.path.join(run, "annotations.json")) as f:
    ds = json.load(f)
  good = ds["annotations"][0]
  ds["annotations"].append(dict(good, id=2, segmentation={"size": [64, 96], "counts": "!!bad"}))
  ds["annotations"].append(dict(good, id=3, segmentation={"size": [10, 10], "counts": "0"}))
  with open(os.path.join(run, "annotations.json"), "w") as f:
    json.dump(ds, f)
  with open(os.path.join(run, "errors.json"), "w") as f:
    f.write("[{\"path\": ")
  with open(os.path.join(run, "run.json"), "w") as f:
    f.write("not json")
  res = build_gallery(run)
  doc = parse(_read(res.index))
  assert "cannot read the list of skipped files" in doc.by_id("errors").text
  problems = doc.by_id("problems").text
  assert "run.json: cannot read the run record" in problems
  assert "annotation 1 (id 2): malformed RLE" in problems and "annotation 2 (id 3): mask size [10, 10]" in problems
  page = parse(_read(os.path.join(run, "gallery", "pages", "1.html")))
  notes = " ".join(p.text for p in page.find_all("p", cls="warn"))
  assert "malformed RLE" in notes
  data = json.loads(page.by_id("page-data").text)
  assert [d["rle"] is not None for d in data["pred"]] == [True, False, False]  # boxes still drawn


def test_image_paths_resolve_under_the_recorded_or_given_root(tmp_path):
  s = synth.make_run(tmp_path / "a", n_images=3)
  root = str(tmp_path / "a")
  moved = str(tmp_path / "elsewhere")
  shutil.move(s["run"], moved)
  assert build_gallery(moved, workers=1).missing == 0  # run.json records the (absolute) root
  with open(os.path.join(moved, "run.json")) as f:
    run = json.load(f)
  del run["images_root"]
  with open(os.path.join(moved, "run.json"), "w") as f:
    json.dump(run, f)
  assert build_gallery(moved, workers=1).missing == 3  # no root recorded: only the run folder, not its parent
  assert build_gallery(moved, images_root=root, workers=1).missing == 0
  with open(os.path.join(moved, "annotations.json")) as f:
    ds = json.load(f)
  ds["info"]["images_root"] = root
  with open(os.path.join(moved, "annotations.json"), "w") as f:
    json.dump(ds, f)
  assert build_gallery(moved, workers=1).missing == 0
  path, why, shown = resolve_image("x/y.png", image_roots(str(tmp_path), {}, None, str(tmp_path)))
  assert path is None and "not found" in why and "--images-root" in why and shown == "x/y.png"


def test_images_outside_the_roots_are_refused_and_paths_are_relative(tmp_path):
  """An absolute file_name, a ../ path or a symlink that leads outside the recorded root (or --images-root) is
  never copied into the gallery: refused per image (page, index), while the images inside are shown with paths
  relative to the root; no page shows an absolute local path."""
  s = synth.make_run(tmp_path / "a", n_images=5, flat=True)
  secret_dir = tmp_path / "private"
  secret_dir.mkdir()
  secret = np.zeros((40, 40, 3), np.uint8)
  secret[:, :, 0] = 255  # pure red: a copy would be recognisable
  Image.fromarray(secret).save(secret_dir / "secret.png")
  os.symlink(secret_dir / "secret.png", tmp_path / "a" / "images" / "link.png")
  with open(os.path.join(s["run"], "annotations.json")) as f:
    ds = json.load(f)
  names = [str(secret_dir / "secret.png"), "../private/secret.png", "images/link.png",
           "images/../../private/secret.png"]
  for im, name in zip(ds["images"], names):
    im["file_name"] = name
  with open(os.path.join(s["run"], "annotations.json"), "w") as f:
    json.dump(ds, f)
  for kw in ({}, {"images_root": str(tmp_path / "a")}):
    out = tmp_path / f"g{len(kw)}"
    res = build_gallery(s["run"], out=str(out), workers=1, **kw)
    assert res.missing == 4 and res.displays_rendered == 1  # only the fifth image is inside the root
    copies = [np.asarray(Image.open(out / "images" / f)) for f in os.listdir(out / "images")]
    thumbs = [np.asarray(Image.open(out / "thumbs" / f)) for f in os.listdir(out / "thumbs")]
    for arr in copies + thumbs:  # nothing red was copied (the refused images are blank canvases)
      assert not ((arr[..., 0] > 200) & (arr[..., 1] < 60)).mean() > 0.3
    for im in ds["images"][:4]:
      page = _read(out / "pages" / f"{im['id']}.html")
      assert "image refused" in page and "outside the images root" in page, im
    good = _read(out / "pages" / f"{ds['images'][4]['id']}.html")
    assert "original file</a> (images/img_00005.png)" in good
    index = _read(out / "index.html")
    assert "outside the images root" in index
    for html in [index] + [_read(out / "pages" / f) for f in os.listdir(out / "pages")]:
      assert str(tmp_path) not in html.replace(str(secret_dir / "secret.png"), "")  # no absolute path shown
  # a folder run's INPUT arguments bound what it may show (run.json input_roots)
  with open(os.path.join(s["run"], "run.json")) as f:
    run = json.load(f)
  run["input_roots"] = [str(tmp_path / "a" / "images" / "img_00005.png")]
  run["images_root"] = str(tmp_path / "a")
  with open(os.path.join(s["run"], "run.json"), "w") as f:
    json.dump(run, f)
  ds["images"][0]["file_name"] = "images/img_00001.png"  # inside the images root, but not an input
  with open(os.path.join(s["run"], "annotations.json"), "w") as f:
    json.dump(ds, f)
  res = build_gallery(s["run"], out=str(tmp_path / "g3"), workers=1)
  assert res.missing == 4 and res.displays_rendered == 1


def test_same_inputs_give_byte_identical_galleries(tmp_path):
  s = synth.make_run(tmp_path, n_images=6, with_gt=True)
  a, b = str(tmp_path / "g1"), str(tmp_path / "g2")
  build_gallery(s["run"], out=a, gt=s["gt_path"], workers=1)
  build_gallery(s["run"], out=b, gt=s["gt_path"], workers=3)
  files = sorted(os.path.relpath(os.path.join(d, n), a) for d, _, ns in os.walk(a) for n in ns)
  assert files == sorted(os.path.relpath(os.path.join(d, n), b) for d, _, ns in os.walk(b) for n in ns)
  for rel in files:
    with open(os.path.join(a, rel), "rb") as f1, open(os.path.join(b, rel), "rb") as f2:
      assert f1.read() == f2.read(), rel


def test_killed_build_leaves_complete_files_and_the_rerun_finishes(tmp_path):
  n = 260
  s = synth.make_run(tmp_path, n_images=n, size=(36, 40), max_instances=2)
  out = os.path.join(s["run"], "gallery")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "zipjax", "gallery", s["run"], "--max-images", "0", "--workers", "1"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  pages = os.path.join(out, "pages")
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline and proc.poll() is None:
    if os.path.isdir(pages) and len([f for f in os.listdir(pages) if not f.startswith(".")]) >= 64:
      break
    time.sleep(0.005)
  assert proc.poll() is None, f"the build ended before it could be killed: {proc.stderr.read()}"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(out, "index.html"))
  done = [f for f in os.listdir(os.path.join(out, "thumbs")) if not f.startswith(".")]
  assert 64 <= len(done) < n
  for sub in ("thumbs", "images"):
    for f in os.listdir(os.path.join(out, sub)):
      if not f.startswith("."):
        with Image.open(os.path.join(out, sub, f)) as im:
          im.load()  # a partial JPEG would raise
  for f in os.listdir(pages):
    if not f.startswith("."):
      assert _read(os.path.join(pages, f)).endswith("</html>\n")
  res = build_gallery(s["run"], max_images=None, workers=2)
  assert res.thumbs_reused == len(done)
  assert res.thumbs_rendered + res.thumbs_reused == n
  assert not [n for sub in ("thumbs", "images", "pages") for n in os.listdir(os.path.join(out, sub))
              if n.startswith(".")]  # temporary files of the killed run are cleaned up
  assert len(os.listdir(pages)) == n


def test_memory_follows_the_image_not_the_numbers_in_the_file(tmp_path):
  """A 60000 x 60000 image record with an 8-character RLE (a 3.35 GiB mask if decoded) and a polygon with
  coordinates of 2e7 (GBs of outline for pycocotools) build in a process limited to 1.5 GiB of address space:
  the oversized record is refused in one line (its page and the index say so), the polygon is clipped to its
  image first and drawn."""
  run = _one_image_run(str(tmp_path))
  with open(os.path.join(run, "annotations.json")) as f:
    ds = json.load(f)
  huge = mask_utils.frPyObjects({"size": [60000, 60000], "counts": [60000 * 60000]}, 60000, 60000)
  assert len(huge["counts"]) <= 8
  ds["images"].append({"id": 2, "file_name": "flat.png", "height": 60000, "width": 60000})
  ds["annotations"] += [
      {"id": 2, "image_id": 2, "category_id": 1, "score": 0.5, "iscrowd": 0,
       "segmentation": {"size": [60000, 60000], "counts": huge["counts"].decode()}},
      {"id": 3, "image_id": 1, "category_id": 1, "score": 0.4, "iscrowd": 0,
       "segmentation": [[-2e7, -2e7, 2e7, -2e7, 2e7, 2e7, -2e7, 2e7]]}]
  with open(os.path.join(run, "annotations.json"), "w") as f:
    json.dump(ds, f)
  code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))\n"
          "from zipjax.gallery.build import build_gallery\n"
          f"r = build_gallery({run!r}, workers=1)\nprint(r.shown, r.missing)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", OPENBLAS_NUM_THREADS="1"), cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["2", "1"]
  index = _read(os.path.join(run, "gallery", "index.html"))
  assert "image record 1 (id 2) claims 60000x60000 px, more than the limit" in index
  assert "claims 60000x60000 px" in _read(os.path.join(run, "gallery", "pages", "2.html"))
  data = json.loads(parse(_read(os.path.join(run, "gallery", "pages", "1.html"))).by_id("page-data").text)
  full = mask_utils.decode({"size": [64, 96], "counts": data["pred"][1]["rle"]["counts"].encode()})
  assert full.all()  # the clipped polygon covers the whole image
