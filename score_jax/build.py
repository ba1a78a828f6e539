"""Builds a run's components from its config: mesh, task, tokenizer, chat format, model.

Shared by the trainer (`score_jax.main`) and the eval loop (`score_jax.evaluate`), so that
both see the same tokenizer, prompts and model structure.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections

from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import mesh as mesh_lib
from score_jax.data import layout as data_layout
from score_jax.model import config as model_config_lib
from score_jax.model import transformer as model_lib
from score_jax.rl import rollout as rollout_lib
from score_jax.tasks import base as task_base
from score_jax.tasks import registry
from score_jax.text import chat as chat_lib
from score_jax.text import tokenizer as tokenizer_lib


@dataclasses.dataclass
class Components:
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  task: task_base.Task
  tokenizer: Any
  chat: Any
  model_config: model_config_lib.ModelConfig
  graphdef: Any
  base_params: Any                 # the initial weights (random or from init.checkpoint)

  def two_turn(self, turn1: int, turn2: int) -> rollout_lib.MultiTurnSampler:
    """The run's sampler of config.rollout.num_attempts attempts (y1 up to `turn1` new
    tokens, every later attempt up to `turn2`)."""
    r = self.config.rollout
    lengths = rollout_lib.Lengths(prompt=r.max_prompt_len, turn1=turn1,
                                  extra=r.max_instruction_len, turn2=turn2,
                                  attempts=int(r.get("num_attempts", 2)))
    return rollout_lib.MultiTurnSampler(self.graphdef, self.tokenizer, self.chat, self.task,
                                        lengths, model_vocab=self.model_config.vocab_size,
                                        **rollout_lib.batching_kwargs(r))


def resolve_data_dir(config: ml_collections.ConfigDict) -> str:
  """Relative data paths are taken from the current directory, then from the repo root."""
  path = pathlib.Path(config.task.data_dir)
  if not path.is_absolute() and not path.exists():
    repo_root = pathlib.Path(__file__).resolve().parents[1]
    if (repo_root / path).exists():
      return str(repo_root / path)
  return str(path)


def build_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  m = config.mesh
  return mesh_lib.make_mesh(data=m.data, fsdp=m.fsdp, tensor=m.tensor)


def build(config: ml_collections.ConfigDict, *, with_params: bool = True) -> Components:
  """All components of a run; `with_params=False` skips creating weights (abstract only).

  Checks first that the task's data files exist (`data.layout.check_task_data`), so a
  missing `task.data_dir` fails before any weights load, naming the `prepare` command.
  """
  task_cfg = config_lib.to_plain(config.task)
  task_cfg["data_dir"] = resolve_data_dir(config)
  splits = [config.task.train_split, config.task.eval_split]
  if config.eval.validation_every:
    splits.append(config.eval.validation_split)
  data_layout.check_task_data(config.task.name, task_cfg["data_dir"], splits)
  mesh = build_mesh(config)
  task = registry.make_task(task_cfg)
  if config.init.checkpoint:
    from score_jax.hub import lm as lm_lib  # pylint: disable=import-outside-toplevel
    lm = lm_lib.load(config.init.checkpoint, dtype=config.model.param_dtype,
                  compute_dtype=config.model.dtype, mesh=mesh)
    if jax.process_index() == 0:
      lm_lib.warn_if_base_chat(lm, config.chat_format)
    model_config = lm.config.replace(remat=config.model.remat,
                                      attention=config.model.attention)
    tokenizer = lm.tokenizer if config.tokenizer.kind == "auto" else _tokenizer(config, task)
    graphdef, params = model_lib.abstract_params(model_config)[0], lm.params
  else:
    tokenizer = _tokenizer(config, task)
    fields = config_lib.to_plain(config.model)
    if not fields["vocab_size"]:
      fields["vocab_size"] = tokenizer.vocab_size
    model_config = model_config_lib.ModelConfig.from_dict(fields)
    if with_params:
      graphdef, params = model_lib.init_params(model_config, mesh, seed=config.seed)
    else:
      graphdef, params = model_lib.abstract_params(model_config, seed=config.seed)
  chat = chat_lib.chat_format(config.chat_format, tokenizer=tokenizer)
  if config.init.params and with_params:
    try:
      params, _, _ = checkpoint_lib.restore_params(config.init.params, params)
    except FileNotFoundError as e:
      raise ValueError(f"config.init.params={config.init.params!r}: {e}") from e
  tokenizer_lib.check_vocab_fits(tokenizer, model_config.vocab_size,
                                 source=config.tokenizer.path or f"{config.tokenizer.kind} tokenizer")
  return Components(config, mesh, task, tokenizer, chat, model_config, graphdef, params)


def _tokenizer(config: ml_collections.ConfigDict, task: task_base.Task):
  cfg = config_lib.to_plain(config.tokenizer)
  if cfg["kind"] == "char":
    cfg["alphabet"] = task.alphabet()
  return tokenizer_lib.tokenizer_from_config(cfg)
