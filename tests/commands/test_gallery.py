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


def _gallery(capsys, *args):
  rc = cli.main(["gallery", *map(str, args)])
  err = capsys.readouterr().err.strip()
  return rc, err


def test_hostile_numbers_and_names_do_not_abort_or_mislead(tmp_path, capsys):
  """A box at x = 1e19, scores of +-1e308 and a file name with an RTL override (U+202E, which makes the name read
  backwards) build: the box is drawn clipped to the image, the histograms hold every score, the name is shown
  with the control character escaped, never raw."""
  s = synth.make_run(tmp_path, n_images=2)
  ds = json.load(open(os.path.join(s["run"], "annotations.json")))
  a = ds["annotations"][0]
  ds["annotations"] += [dict(a, id=90, bbox=[1e19, 0, 5, 5], segmentation=None, score=1e308),
                        dict(a, id=91, score=-1e308)]
  del ds["annotations"][-2]["segmentation"]
  evil = "images/evil\u202egnp.exe.png"
  os.rename(os.path.join(tmp_path, ds["images"][0]["file_name"]), os.path.join(tmp_path, evil))
  ds["images"][0]["file_name"] = evil
  json.dump(ds, open(os.path.join(s["run"], "annotations.json"), "w"))
  rc, err = _gallery(capsys, s["run"])
  assert rc == 0, err
  out = os.path.join(s["run"], "gallery")
  texts = [open(os.path.join(out, "index.html"), encoding="utf-8").read()] + [
      open(os.path.join(out, "pages", f), encoding="utf-8").read() for f in os.listdir(os.path.join(out, "pages"))]
  assert not any("\u202e" in t for t in texts)
  assert any("evil\\u202egnp.exe.png" in t for t in texts)
  doc = parse(texts[0])
  counts = [int(r.find_all("td")[1].text) for r in doc.by_id("classes").find_all("tr") if "data-cat" in r.attrs]
  assert sum(counts) == len(ds["annotations"])


def test_out_folder_is_checked_and_never_taken_over(tmp_path, capsys):
  s = synth.make_run(tmp_path / "r", n_images=1)
  mine = tmp_path / "site"
  mine.mkdir()
  (mine / "index.html").write_text("<p>my own page</p>")
  (mine / "thumbs").mkdir()
  (mine / "thumbs" / ("0" * 32 + ".jpg")).write_bytes(b"my photo")
  rc, err = _gallery(capsys, s["run"], "--out", mine)
  assert rc == 2 and "did not create" in err and "--overwrite" in err and "\n" not in err
  assert (mine / "index.html").read_text() == "<p>my own page</p>" and (mine / "thumbs" / ("0" * 32 + ".jpg")).exists()
  assert _gallery(capsys, s["run"], "--out", mine, "--overwrite")[0] == 0
  assert _gallery(capsys, s["run"], "--out", mine)[0] == 0  # now a gallery: rebuilt in place
  assert _gallery(capsys, s["run"])[0] == 0 and _gallery(capsys, s["run"])[0] == 0  # the default folder
  (tmp_path / "file").write_text("x")
  for out, msg in ((tmp_path / "file", "not a directory"), (tmp_path / "file" / "below", "below it"),
                   ("/proc/zipjax-gallery", "")):
    rc, err = _gallery(capsys, s["run"], "--out", out)
    assert rc == 2 and err.startswith("zipjax gallery: error: --out") and msg in err and "\n" not in err, err


def test_deeply_nested_json_is_one_line(tmp_path, capsys):
  s = synth.make_run(tmp_path, n_images=1, with_gt=True)
  deep = "[" * 200000 + "]" * 200000
  ann = open(os.path.join(s["run"], "annotations.json")).read()
  run_json = open(os.path.join(s["run"], "run.json")).read()
  for target, text, where in ((os.path.join(s["run"], "annotations.json"), ann, "annotations.json"),
                              (s["gt_path"], open(s["gt_path"]).read(), "gt.json")):
    with open(target, "w") as f:
      f.write(text.replace('"images": [', '"extra": ' + deep + ', "images": [', 1))
    rc, err = _gallery(capsys, s["run"], "--gt", s["gt_path"])
    assert rc == 2 and where in err and "nested too deeply" in err and "\n" not in err, err
    with open(target, "w") as f:
      f.write(text)
  with open(os.path.join(s["run"], "run.json"), "w") as f:
    f.write('{"info": ' + deep + "}")
  rc, err = _gallery(capsys, s["run"])
  assert rc == 0 and "run.json: cannot read the run record (JSON nested too deeply)" in err
  with open(os.path.join(s["run"], "run.json"), "w") as f:
    f.write(run_json)


def test_broken_pipe_is_quiet(tmp_path):
  import subprocess
  import sys
  s = synth.make_run(tmp_path, n_images=1)
  proc = subprocess.Popen([sys.executable, "-m", "zipjax", "gallery", s["run"]], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  proc.stdout.close()  # `| head -0`: the reader is gone before anything is printed
  err = proc.stderr.read().decode()
  assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
