"""The identity of a run of `zipjax label`, `zipjax segment` and `zipjax detect`: everything a resumed run must
share with the run it continues, so that the images it adds are computed the same way as the images already done.

An identity is a plain dict (keys sorted at every level, only JSON values): the command, the zipjax version, the
class names, the inputs (their absolute paths or dataset spec) and what decides the outputs: for label and
segment the config without its runtime-only groups (`RUNTIME_FIELDS`: batch size, writer, mesh settings may
change on resume) and each model's identity (`model_identity`: its checkpoint, identified without loading it, or
its random-init seed and architecture, and the compute dtype it runs in); for detect the train workdir, the
checkpoint step and the model, text and detection settings (`zipjax.commands.detect.detect_identity`). All of
them are built by `make_identity`.

It is stored as `OUT/.zipjax/job.json` of the run directory (`zipjax.io.shards.RunDir.write_job`) when a run
starts. A rerun computes its identity again and compares: the same identity resumes (finished images are
skipped). `zipjax label` refuses a different one, or shards without a job.json (`check_identity`: exit 2, naming
the differences) unless `--overwrite` starts over; the folder commands (`zipjax.jobs.folder_run`) start afresh
under a different identity. The `info` block of `annotations.json` is derived from the identity alone
(`annotations_info`), so it is the same bytes on every run.
"""
from __future__ import annotations

import hashlib
import json
import os

import zipjax
from zipjax import weights
from zipjax.errors import InputError
from zipjax.io.results import RANDOM_NOTE
from zipjax.io.shards import RunDir
from zipjax.models.storage import resolve_dtype

# config groups that change how fast a run goes, never what it outputs (excluded from the run identity)
RUNTIME_FIELDS = ("batch_size", "label", "output", "mesh", "sharding_rules")


def result_config(config) -> dict:
  """The config without its runtime-only groups (`RUNTIME_FIELDS`)."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}


def _plain(x):
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in sorted(x.items())}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return x


def checkpoint_identity(spec: str, family: str) -> dict:
  """What identifies a checkpoint without loading it: the manifest entry (name, file, sha256) of a known name;
  for a file, its name, size and a sha256 of its size + first and last MiB; for a converted directory, a sha256
  of its file names, sizes and config.json; for a Hub name (hf:...), the name and the commit its weights in
  the Hugging Face cache come from (when cached)."""
  if weights.is_hub_name(str(spec)):
    try:
      return {"name": str(spec), "commit": weights.hub_commit(str(spec), family)}
    except Exception:  # pylint: disable=broad-except
      return {"name": str(spec)}  # not cached (or not a valid name): loading the model reports it
  path = os.path.expanduser(str(spec))
  if os.path.isfile(path):
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
      h.update(f.read(1 << 20))
      if size > 2 << 20:
        f.seek(size - (1 << 20))
        h.update(f.read(1 << 20))
    return {"file": os.path.basename(path), "size": size, "quick_sha256": h.hexdigest()}
  if os.path.isdir(path):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
      dirnames.sort()
      for n in sorted(filenames):
        p = os.path.join(dirpath, n)
        h.update(f"{os.path.relpath(p, path)}:{os.path.getsize(p)}\n".encode())
        if n == "config.json":
          with open(p, "rb") as f:
            h.update(f.read())
    return {"dir": os.path.basename(os.path.normpath(path)), "sha256": h.hexdigest()}
  try:
    entry = weights.lookup(str(spec), family)
  except Exception:  # pylint: disable=broad-except
    return {"name": str(spec)}  # unknown: loading the model reports it
  return {"name": entry["name"], "file": entry["file"], "sha256": entry.get("sha256")}


def model_identity(config, random_init: bool) -> dict:
  """Per model: the random-init seed and architecture, or the checkpoint identity; and the compute dtype it
  runs in here ('auto' resolved for this platform: outputs differ between dtypes)."""
  m = config.models
  out = {}
  sam_family = str(config.sam.get("family", "sam"))
  for i, (field, family) in enumerate((("semantic", "clip"), ("boundary", "clip"), ("sam", sam_family))):
    if field == "sam" and not config.sam.enabled:
      continue
    if random_init:
      out[field] = {"random_init": True, "seed": int(m.seed) + i, "arch": _plain(m[field].arch)}
    else:
      out[field] = checkpoint_identity(m[field].checkpoint, family)
    out[field]["compute_dtype"] = resolve_dtype(m[field].get("dtype", "float32"))
  return out


def make_identity(command: str, names, config: dict, inputs: dict, **fields) -> dict:
  """A run identity: the command, the zipjax version, the class names, the result-affecting `config`, the
  `inputs` and the command's own `fields` (keys sorted at every level, so the identity read back from job.json
  equals the one computed)."""
  return _plain({"command": command, "zipjax_version": zipjax.__version__, "classes": list(names),
                 "config": config, "inputs": inputs, **fields})


def job_identity(command: str, config, names, random_init: bool, inputs: dict) -> dict:
  """The identity of a `zipjax label` or `zipjax segment` run (stored as .zipjax/job.json)."""
  return make_identity(command, names, result_config(config), inputs, random_init=bool(random_init),
                       models=model_identity(config, random_init))


def annotations_info(job: dict) -> dict:
  """The `info` block of annotations.json: derived from the identity only, so it is the same on every run."""
  info = {"description": f"zipjax {job['command']}", "zipjax_version": job["zipjax_version"],
          "preset": job["config"].get("preset"), "random_init": job["random_init"], "classes": job["classes"],
          "models": job["models"]}
  if job["random_init"]:
    info["note"] = RANDOM_NOTE
  return info


def _diff(old, new, prefix="") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      if old.get(k, "<absent>") != new.get(k, "<absent>"):
        out += _diff(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")
    return out
  return [f"{prefix.rstrip('.')} ({json.dumps(old)[:60]} -> {json.dumps(new)[:60]})"]


def check_identity(rd: RunDir, job: dict, overwrite: bool, log) -> None:
  """Writes job.json for a new run; refuses a run directory started under another identity (InputError)."""
  old = rd.read_job()
  if old is None and rd.shard_names():
    if not overwrite:
      raise InputError(f"{rd.root} holds shards of an unknown run (no .zipjax/job.json); use --overwrite to "
                       "start over or another --out")
  if old is not None and old != job:
    if not overwrite:
      diffs = _diff(old, job)
      raise InputError(f"{rd.root} was started with a different run identity; refusing to resume. Differences: "
                       f"{'; '.join(diffs[:6])}{' ...' if len(diffs) > 6 else ''}. Use --overwrite to start "
                       "over, or another --out")
  if overwrite and (old is not None or rd.shard_names()):
    log(f"--overwrite: discarding the previous run in {rd.root}")
    rd.reset(outputs=True)
  if old != job or overwrite:
    rd.write_job(job)


__all__ = ["RUNTIME_FIELDS", "result_config", "checkpoint_identity", "model_identity", "make_identity",
           "job_identity", "annotations_info", "check_identity"]
