"""Experiments: a base model, then methods trained from it, evaluated side by side.

Used by `configs/demo.py` (base vs SCoRe) and `configs/paper_table.py` (the paper's Table 2
and ablations in miniature). For each seed:

  1. base:    supervised warm-up on the task's demonstrations -> `W/seed_<s>/base/`
  2. methods: each trained from the base weights, with the base as the frozen reference
              -> `W/seed_<s>/<method>/`
  3. eval:    greedy two-turn decoding on the held-out split, for every method

then `W/results.json`, `W/results.md` and the plots (`score_jax.report`). Every run is an
ordinary resumable training run, so an interrupted experiment picks up where it stopped.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from score_jax import build as build_lib
from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import evaluate as evaluate_lib
from score_jax import metrics as metrics_lib
from score_jax import report
from score_jax import train
from score_jax.rl import plan as plan_lib
from score_jax.tasks import prompts

# Method name -> label in tables; `method_config` says how its training run differs from
# the base config. `base` and `self_refine` are not trained (report.UNTRAINED): the base
# model with the task's own turn-2 instruction, and with Self-Refine's critique-then-revise
# instruction (score_jax.tasks.prompts.self_refine_instruction). The RL methods use the
# experiment's RL steps (experiment.rl_steps), split between Stage I and the next stage by
# experiment.stage1_fraction where the method has two stages.
METHODS: dict[str, str] = {
    "base": "Base model",
    "self_refine": "Self-Refine (zero-shot prompt)",
    "star": "STaR (D+)",
    "pair_sft": "Pair-SFT",
    "single_turn_rl": "Single-turn RL",
    "no_stage1": "Multi-turn RL w/o Stage I",
    "no_shaping": "SCoRe w/o reward shaping",
    "star_stage2": "SCoRe w/ STaR instead of REINFORCE in Stage II",
    "score": "SCoRe",
}


def method_config(config: ml_collections.ConfigDict, method: str, seed: int,
                  base_checkpoints: str) -> ml_collections.ConfigDict:
  """The training config of `method`, starting from the base model's weights."""
  c = copy.deepcopy(config)
  exp = config.experiment
  c.seed = seed
  c.experiment.methods = ""
  c.init.params = base_checkpoints
  rl_steps = int(exp.rl_steps)
  stage1 = int(round(rl_steps * float(exp.stage1_fraction)))
  plan = dict(sft_steps=0, stage1_steps=0, stage2_steps=0, single_turn_steps=0, star_steps=0,
              pair_sft_steps=0)
  if method in ("score", "no_shaping"):
    plan.update(stages="stage1,stage2", stage1_steps=stage1, stage2_steps=rl_steps - stage1)
    if method == "no_shaping":
      c.rl.alpha = 0.0
  elif method == "no_stage1":
    plan.update(stages="stage2", stage2_steps=rl_steps)
  elif method == "single_turn_rl":
    plan.update(stages="single_turn", single_turn_steps=rl_steps)
  elif method == "star_stage2":
    # The paper's ablation: Stage I, then STaR steps (SFT on the policy's own traces that
    # end right) in place of Stage II's REINFORCE; both at the RL learning rate.
    plan.update(stages="stage1,star", stage1_steps=stage1, star_steps=rl_steps - stage1)
  elif method in ("star", "pair_sft"):
    plan.update(stages=method, **{f"{method}_steps": int(exp.sft_baseline_steps)})
    c.optim.lr = float(exp.sft_baseline_lr)
  elif method in report.UNTRAINED:
    raise ValueError(f"method {method!r} is not trained: it is evaluated with the base "
                     f"model's weights")
  else:
    raise ValueError(f"unknown method {method!r}; methods are {sorted(METHODS)}")
  c.plan.update(plan)
  return c


def base_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  c = copy.deepcopy(config)
  c.seed = seed
  c.experiment.methods = ""
  c.plan.update(stages="sft", sft_steps=int(config.experiment.base_steps))
  return c


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, force: bool = False
           ) -> None:
  """Runs (or resumes, or skips when finished) one training run."""
  total = plan_lib.total_steps(plan_lib.build_plan(config.plan))
  if checkpoint_lib.latest_step(workdir / "checkpoints") == total:
    print(f"{workdir}: already trained ({total} steps)", flush=True)
    return
  train.Trainer(config, workdir, force=force).run()


def _final_params(workdir: pathlib.Path, like: Any,
                  config: ml_collections.ConfigDict | None = None) -> Any:
  """The params to evaluate, printing which step and why: a trained method's
  config.experiment.checkpoint (best | latest | a step); without `config` (the base model)
  the latest step, the weights the methods start from (config.init.params). A step that
  does not match its digests is skipped for the next candidate (checkpoint.candidates)."""
  which = "latest" if config is None else config.experiment.checkpoint
  best_metric = "acc_t2" if config is None else config.checkpoint.best_metric
  choices = checkpoint_lib.candidates(workdir / "checkpoints", which, best_metric)
  reader = checkpoint_lib.Checkpointer(workdir / "checkpoints", read_only=True, keep_best=False)
  params, _, _, step, _ = reader.restore_first_good([s for s, _ in choices], like)
  why = dict(choices)[step]
  if config is None:
    why += "; the base model every method starts from"
  if jax.process_index() == 0:
    print(f"{workdir}: evaluating step {step}: {why}", flush=True)
  return params


def _parse_list(text: str, cast=str) -> list:
  return [cast(x.strip()) for x in str(text).split(",") if x.strip()]


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, force: bool = False
        ) -> dict[str, Any]:
  """Runs the experiment of `config.experiment` in `workdir`; returns results.json's content.
  `force`: resume runs whose config changed (`train.Trainer`)."""
  workdir = pathlib.Path(workdir)
  config_lib.check_ranges(config)
  exp = config.experiment
  methods = _parse_list(exp.methods)
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"config.experiment.methods: unknown {unknown}; choose from {list(METHODS)}")
  seeds = _parse_list(exp.seeds, int) or [int(config.seed)]
  per_seed: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in methods}
  samples: dict[str, list[dict[str, Any]]] = {}
  for seed in seeds:
    seed_dir = workdir / f"seed_{seed}"
    print(f"=== seed {seed}: base model ===", flush=True)
    base_dir = seed_dir / "base"
    base_cfg = base_config(config, seed)
    _train(base_cfg, base_dir, force)
    c = build_lib.build(base_cfg)
    problems = evaluate_lib.eval_problems(c)
    base_params = _final_params(base_dir, c.base_params)
    for method in methods:
      print(f"=== seed {seed}: {METHODS[method]} ===", flush=True)
      if method in report.UNTRAINED:
        params = base_params
      else:
        mdir = seed_dir / method
        _train(method_config(config, method, seed, str(base_dir / "checkpoints")), mdir, force)
        params = _final_params(mdir, c.base_params, config)
      # Self-Refine: the base model, prompted to critique its first attempt, then revise.
      instruction = (prompts.self_refine_instruction(config.task.name)
                     if method == "self_refine" else None)
      result = evaluate_lib.evaluate_params(
          c, params, problems, batch_size=config.eval.batch_size,
          turn1_tokens=config.eval.max_turn1_tokens, turn2_tokens=config.eval.max_turn2_tokens,
          instruction=instruction)
      records = result.pop("records")
      per_seed[method][seed] = result
      if seed == seeds[0]:
        samples[method] = records[:20]
      print(report.one_line(METHODS[method], result), flush=True)
    c.task.close()
  results = aggregate(per_seed, seeds)
  results["_meta"] = {"seeds": seeds, "task": config.task.name,
                      "n": int(next(iter(per_seed.values()))[seeds[0]]["n"]),
                      "labels": {m: METHODS[m] for m in methods}}
  table = report.markdown_table(results, methods)
  if jax.process_index() == 0:     # every process ran everything; one writes the outputs
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    (workdir / "samples.json").write_text(json.dumps(samples, indent=2))
    (workdir / "results.md").write_text(table + "\n")
    report.plot_training(workdir, methods, seeds[0], results["_meta"]["labels"])
    report.plot_results(workdir, results, methods)
    report.plot_attempts(workdir, results, methods)
    if metrics_lib.num_attempts(results[methods[0]]) > 2:   # accuracy by attempt
      table += "\n\n" + report.attempts_table(results, methods)
      (workdir / "results.md").write_text(table + "\n")
    print("\n" + table, flush=True)
  return results


def aggregate(per_seed: dict[str, dict[int, dict[str, Any]]], seeds: list[int]
              ) -> dict[str, Any]:
  """Mean and standard error per method: over problems for one seed, over seeds otherwise."""
  out: dict[str, Any] = {}
  for method, by_seed in per_seed.items():
    row: dict[str, Any] = {"n": by_seed[seeds[0]]["n"], "seeds": seeds}
    for key in metrics_lib.keys(metrics_lib.num_attempts(by_seed[seeds[0]])):
      values = np.array([by_seed[s][key] for s in seeds], np.float64)
      row[key] = float(values.mean())
      if len(seeds) == 1:
        row[f"{key}_se"] = float(by_seed[seeds[0]].get(f"{key}_se", 0.0))
      else:
        row[f"{key}_se"] = float(values.std(ddof=1) / np.sqrt(len(seeds)))
      row[f"{key}_per_seed"] = values.tolist()
    out[method] = row
  return out
