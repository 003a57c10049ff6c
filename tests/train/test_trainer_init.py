"""Initialisation of a fresh run: `init_checkpoint` (a converted CLIP directory) puts CLIP's vision weights into
the backbone and its projection into the class head, and the class names are embedded by that CLIP's text tower;
`init_workdir` starts from another run's checkpointed parameters exactly."""
import jax
import numpy as np

from zipjax.clip import ClipModel
from zipjax.commands.segment import apply_overrides, load_config_file
from zipjax.convert.store import save_converted
from zipjax.data import coco_train, synthetic
from zipjax.models.clip_net import CLIPConfig
from zipjax.train import checkpoints
from zipjax.train import task
from zipjax.train import trainer as tr

TINY = ["--config.model.input_size=64", "--config.model.width=64", "--config.model.layers=1",
        "--config.model.heads=1", "--config.model.embed_dim=32", "--config.model.mask_dim=16",
        "--config.model.pixel_width=16", "--config.model.stem_width=8", "--config.xla_opt_level=0",
        "--config.mesh=[('data', -1)]", "--config.fsdp_min_size=64", "--config.text.templates=bare"]


def test_init_checkpoint_and_init_workdir(tmp_path):
  # a random CLIP whose vision tower fits the detector (patch 16, width 64 -> 1 head, 1 block, 32-d embeddings)
  arch = CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                    transformer_width=32, transformer_heads=1, transformer_layers=1)
  clip = ClipModel.random(arch, seed=5)
  save_converted(tmp_path / "clip", "clip", arch.to_dict(), jax.device_get(clip.variables))
  config = apply_overrides(load_config_file("configs/train_smoke.py"),
                           TINY + [f"--config.init_checkpoint={tmp_path / 'clip'}"])
  trainer = tr.Trainer(config, task.detector_task(config))
  loaded = task.text_encoder(config)  # the checkpoint's CLIP embeds the class names
  np.testing.assert_array_equal(np.asarray(loaded.encode_text(["circle"])), np.asarray(clip.encode_text(["circle"])))
  params = jax.device_get(tr.initial_params(config, trainer, loaded, log=lambda m: None))
  visual = jax.device_get(clip.variables["params"]["visual"])
  np.testing.assert_array_equal(params["backbone"]["conv1"]["kernel"], visual["conv1"]["kernel"])
  np.testing.assert_array_equal(params["backbone"]["transformer"]["resblocks_0"]["attn"]["in_proj_weight"],
                                visual["transformer"]["resblocks_0"]["attn"]["in_proj_weight"])
  np.testing.assert_array_equal(params["backbone"]["positional_embedding"][0], visual["positional_embedding"][0])
  np.testing.assert_array_equal(params["class_head"]["dense0"]["kernel"], visual["proj"])
  random = jax.device_get(trainer.init_params())  # the heads stay the random initialisation
  np.testing.assert_array_equal(params["box_head"]["dense0"]["kernel"], random["box_head"]["dense0"]["kernel"])
  assert not np.array_equal(params["backbone"]["conv1"]["kernel"], random["backbone"]["conv1"]["kernel"])

  # a workdir with a checkpoint of these parameters -> a new run initialised from it gets them exactly
  d = tmp_path / "shapes"
  synthetic.generate(d, 2, seed=1, min_side=40, max_side=60, max_objects=2)
  ts = coco_train.load_train_set(d / "annotations.json", d / "images")
  it = coco_train.make_iterator(coco_train.make_dataset(ts, coco_train.augment_params(config), 8, 0))
  state = trainer.init_state(trainer.place_params(params))
  ck = checkpoints.Checkpoints(str(tmp_path / "run" / "checkpoints"), every=1, keep=1)
  ck.save(7, state, it, {"step": 7})
  ck.wait()
  ck.close()
  (tmp_path / "run" / "config.json").write_text(config.to_json())
  config2 = apply_overrides(load_config_file("configs/train_smoke.py"),
                            TINY + [f"--config.init_workdir={tmp_path / 'run'}", "--config.seed=3"])
  trainer2 = tr.Trainer(config2, task.detector_task(config2))
  restored = tr.initial_params(config2, trainer2, log=lambda m: None)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)
  assert restored["backbone"]["conv1"]["kernel"].sharding == trainer2.state_shardings["params"]["backbone"]["conv1"][
      "kernel"]
  # the text tower is inherited from the run it starts from
  inherited = task.text_encoder(config2)
  np.testing.assert_array_equal(np.asarray(inherited.encode_text(["star"])), np.asarray(clip.encode_text(["star"])))
