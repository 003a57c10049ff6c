"""`zipjax gallery` on the command line: exit codes, the printed index path and file:// URL, flags reaching the
build, clear errors; `gallery_hint`; and (slow) a gallery of a real `zipjax segment --random-init` smoke run."""
import json
import os
import re

import pytest

from tests.gallery import synth
from tests.gallery.dom import parse
from zipjax import cli
from zipjax.gallery import gallery_hint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")


def test_cli_builds_and_prints_index_and_url(tmp_path, capsys):
  s = synth.make_run(tmp_path, n_images=5, with_gt=True)
  out = tmp_path / "site"
  rc = cli.main(["gallery", s["run"], "--out", str(out), "--max-images", "3", "--gt", s["gt_path"],
                 "--thumb-size", "64", "--workers", "1"])
  assert rc == 0
  text = capsys.readouterr().out
  index = os.path.join(str(out), "index.html")
  assert f"index: {index}\n" in text
  assert f"open:  file://{index}\n" in text
  assert "gallery of 3 image(s) (a sample of 5)" in text
  doc = parse(open(index, encoding="utf-8").read())
  assert len(doc.find_all("figure", cls="thumb")) == 3
  assert doc.by_id("gt-summary") is not None
  assert all(int(f.find("img").attrs["width"]) <= 64 for f in doc.find_all("figure", cls="thumb"))


@pytest.mark.parametrize("args,message", [
    (["{tmp}/nothing"], "not a folder"),
    (["{tmp}"], "no annotations.json"),
    (["{run}", "--max-images", "-1"], "--max-images must be >= 0"),
    (["{run}", "--workers", "0"], "--workers must be >= 1"),
    (["{run}", "--thumb-size", "4"], "--thumb-size must be between 16 and 8192"),
    (["{run}", "--gt", "{tmp}/gt.json"], "gt.json: file not found"),
])
def test_cli_errors(tmp_path, capsys, args, message):
  s = synth.make_run(tmp_path / "r", n_images=1)
  rc = cli.main(["gallery"] + [a.format(tmp=tmp_path, run=s["run"]) for a in args])
  assert rc == 2
  err = capsys.readouterr().err
  assert err.startswith("zipjax gallery: error: ") and message in err


def test_gallery_hint_names_the_command():
  assert gallery_hint("out") == "look at the results: zipjax gallery out  (then open out/gallery/index.html)"
  assert "zipjax gallery 'my runs/a'" in gallery_hint("my runs/a")


@pytest.mark.slow
def test_gallery_of_a_segment_smoke_run(tmp_path, capsys, monkeypatch):
  """zipjax segment --random-init (smoke config) prints the gallery command; the gallery shows its output."""
  monkeypatch.setenv("ZIPJAX_CACHE", str(tmp_path / "cache"))
  src = tmp_path / "in"
  src.mkdir()
  (src / "oranges.png").write_bytes(open(os.path.join(ROOT, "examples", "oranges.png"), "rb").read())
  (src / "bad.png").write_text("not an image")
  out = tmp_path / "seg"
  assert cli.main(["segment", str(src), "--classes", "orange,table", "--random-init", "--config", SMOKE,
                   "--out", str(out), "--config.discover.min_instance_cells=4"]) == 0
  printed = capsys.readouterr().out
  assert gallery_hint(str(out)) in printed
  assert cli.main(["gallery", str(out)]) == 0
  ds = json.load(open(out / "annotations.json"))
  doc = parse(open(out / "gallery" / "index.html", encoding="utf-8").read())
  counts = {r.find("button").text: int(r.find_all("td")[1].text)
            for r in doc.by_id("classes").find_all("tr") if "data-cat" in r.attrs}
  assert counts == {c["name"]: sum(a["category_id"] == c["id"] for a in ds["annotations"])
                    for c in ds["categories"]}
  assert [f.attrs["data-id"] for f in doc.find_all("figure", cls="thumb")] == [str(i["id"]) for i in ds["images"]]
  assert "RANDOM WEIGHTS" in doc.find("header").text
  assert re.search(r"bad\.png", doc.by_id("errors").text)
  for im in ds["images"]:
    assert (out / "gallery" / "pages" / f"{im['id']}.html").is_file()
