"""The import contract (.importlinter: layers that point down only, no cycles between siblings) holds for the
library, and it does catch a violation: a copy of the library where io/ imports the engine fails it.
(`lint-imports` in a directory reads its .importlinter: setup.cfg has no [importlinter] section.)"""
import configparser
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACT = os.path.join(ROOT, ".importlinter")
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(cwd: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=cwd)
  return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)  # reads cwd/.importlinter


def test_contract_states_layers_and_no_cycles():
  cfg = configparser.ConfigParser()
  assert cfg.read(CONTRACT) == [CONTRACT]
  kinds = {cfg[s]["type"]: cfg[s] for s in cfg.sections() if s.startswith("importlinter:contract:")}
  layers = [ln.strip() for ln in kinds["layers"]["layers"].splitlines() if ln.strip()]
  order = {name.strip(): i for i, ln in enumerate(layers) for name in ln.split("|")}
  for low in ("models", "ops"):  # models and ops import neither pipeline, train, jobs nor commands
    assert all(order[low] > order[high] for high in ("pipeline", "train", "jobs", "commands"))
  assert order["io"] > order["models"]  # io imports no models
  assert kinds["layers"]["exhaustive"] == "true"
  assert kinds["acyclic_siblings"]["ancestors"].strip() == "zipjax"


def test_lint_imports_passes():
  r = _lint(ROOT)
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
  assert "2 kept, 0 broken" in r.stdout, r.stdout[-2000:]


def test_a_violation_breaks_the_contract(tmp_path):
  shutil.copytree(os.path.join(ROOT, "zipjax"), tmp_path / "zipjax", ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(CONTRACT, tmp_path / ".importlinter")
  with open(tmp_path / "zipjax" / "io" / "atomic.py", "a", encoding="utf-8") as f:
    f.write("\n\ndef _upward():\n  from zipjax import engine  # noqa: F401  pylint: disable=import-outside-toplevel\n")
  r = _lint(str(tmp_path))
  assert r.returncode != 0
  assert "zipjax.io.atomic -> zipjax.engine" in r.stdout, r.stdout[-4000:]
