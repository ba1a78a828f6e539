"""Multi-process (multi-host) runs: 2 processes x 4 CPU devices against 1 x 8.

Processes on this machine stand in for the hosts of a pod: each gets its own CPU devices
(JAX_NUM_CPU_DEVICES) and joins the others through score_jax.multihost's
jax.distributed.initialize('localhost:PORT', N, i) (from JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID); collectives go over gloo. This file is also the
program those processes run: `python -m tests.test_multiprocess MODE ARGS...`.

Default run:
- 2 processes x 4 devices split a batch by rows, rebuild global arrays, gather per-row
  values, reshard params to the sampling layout, and sample two-turn rollouts whose
  process-local rows are exactly the rows of the all-rows rollout.
Slow (`pytest -m slow`):
- 2 processes x 4 devices train sft + Stage I + Stage II with the same per-step metrics and
  final params as 1 process x 8 devices; a checkpoint of either resumes in the other; the
  evaluator on 2 processes writes what it writes on 1.
The single-process memory options (remat, bf16, accumulation, sampling layout) are
tested in tests/rl/test_step.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_jax import build as build_lib
from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import evaluate as evaluate_lib
from score_jax import main as main_lib
from score_jax import mesh as mesh_lib
from score_jax import metrics as metrics_lib
from score_jax import multihost
from score_jax import reshard
from score_jax import sampler as sampler_lib
from score_jax.tasks import toy

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.py"


# --- running processes ------------------------------------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(mode: str, args: list[str], *, processes: int, devices: int,
           log_dir: pathlib.Path, timeout: float, module: str = "tests.test_multiprocess"
           ) -> None:
  """Runs `processes` copies of `module`'s worker `mode` (default: this file's), each with
  `devices` CPU devices; raises with their logs unless all exit 0."""
  port = _free_port()
  procs, logs = [], []
  for i in range(processes):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XLA_", "SLURM_", "JAX_NUM_CPU_DEVICES", "JAX_PROCESS",
                                "JAX_NUM_PROCESSES", "JAX_COORDINATOR"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
               PYTHONPATH=str(REPO))
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                 JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
    log = log_dir / f"{mode}.{processes}x{devices}.{i}.log"
    logs.append(log)
    with open(log, "w") as f:
      procs.append(subprocess.Popen([sys.executable, "-m", module, mode,
                                     *args], cwd=REPO, env=env, stdout=f,
                                    stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  if any(codes):
    tails = "\n".join(f"--- {log.name} (exit {c}) ---\n{log.read_text()[-4000:]}"
                      for log, c in zip(logs, codes))
    raise AssertionError(f"worker {mode} failed:\n{tails}")


# --- worker programs (run in the subprocesses) ---------------------------------------------

def _parity_rewards(self, problems, responses):
  """A dense reward: 1 when the response has an even number of upper-case letters.

  A few sft steps leave the toy model's answers random, so the toy task's exact-match
  reward is always 0 and the policy-gradient terms vanish; this one is 1 about half the
  time, so rewards, baselines and their gathering all matter.
  """
  del self, problems
  return [float(sum(ch.isupper() for ch in y) % 2 == 0) for y in responses]


def worker_train(argv: list[str]) -> None:
  """`score_jax.main` on the toy task with the parity reward."""
  toy.ToyTask.rewards = _parity_rewards
  main_lib.main(argv)


def worker_checks(argv: list[str]) -> None:
  """Row split, global arrays, gathers, sampling reshard and process-local rollouts."""
  out_dir = pathlib.Path(argv[0])
  multihost.maybe_initialize_distributed(ml_collections.ConfigDict({"distributed": True}))
  me = jax.process_index()
  got: dict = {"process": me, "processes": jax.process_count(),
               "local_devices": jax.local_device_count(), "devices": jax.device_count()}
  mesh = mesh_lib.make_mesh(fsdp=-1)

  # 8 rows over 8 devices: 4 rows per process, each owned once.
  split = multihost.row_split(mesh, 8)
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  g = multihost.put_local_batch(x[split.rows], mesh, split)
  got["rows8"], got["owned8"] = split.rows.tolist(), split.owned.tolist()
  got["global_row_sums8"] = np.asarray(jax.jit(lambda a: a.sum(1), out_shardings=(
      jax.sharding.NamedSharding(mesh, jax.P())))(g)).tolist()
  got["local_rows8"] = multihost.local_rows(g, split).tolist()
  got["gather8"] = multihost.gather_rows([f"row{r}" for r in split.rows], split)
  # 4 rows do not divide 8 devices: replicated, every process holds (and prepares) all.
  split4 = multihost.row_split(mesh, 4)
  got["rows4"], got["owned4"] = split4.rows.tolist(), split4.owned.tolist()
  got["gather4"] = multihost.gather_rows([f"p{me}r{r}" for r in split4.rows], split4)
  g4 = multihost.put_local_batch(x[:4], mesh, split4)
  got["sum4"] = float(jax.jit(jnp.sum)(g4))

  # Params in the sampling layout (replicated over fsdp), and process-local rollouts.
  config = config_lib.load(TINY, [])
  c = build_lib.build(config)
  copy = reshard.SamplingParams(fsdp=False).get("policy", c.base_params)
  specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(copy)}
  got["sampling_specs"] = sorted(specs)
  got["train_specs"] = sorted({str(leaf.sharding.spec)
                               for leaf in jax.tree.leaves(c.base_params)})
  two_turn = c.two_turn(8, 8)
  problems = [p for p in c.task.load("train")[:4] for _ in range(2)]
  kw = dict(method=sampler_lib.Temperature(1.0), rng=jax.random.key(3))
  local = two_turn.rollout(c.base_params, c.base_params, problems, process_local=True, **kw)
  whole = two_turn.rollout(c.base_params, c.base_params, problems, **kw)
  from_copy = two_turn.rollout(copy, copy, problems, process_local=True, **kw)
  got["local_rows"] = local.split.rows.tolist()
  got["local_y1"], got["local_y2"] = local.y1, local.y2
  got["local_tokens"] = local.episode.tokens_BT.tolist()
  got["local_logprobs"] = local.episode.sampler_logprobs_BT.tolist()
  got["whole_y1"], got["whole_y2"] = whole.y1, whole.y2
  got["whole_tokens"] = whole.episode.tokens_BT.tolist()
  got["whole_logprobs"] = whole.episode.sampler_logprobs_BT.tolist()
  got["copy_tokens"] = from_copy.episode.tokens_BT.tolist()
  got["gathered_y2"] = multihost.gather_rows(local.y2, local.split)
  (out_dir / f"checks{me}.json").write_text(json.dumps(got))


def worker_eval(argv: list[str]) -> None:
  """`score_jax.evaluate` on the toy task with the parity reward."""
  toy.ToyTask.rewards = _parity_rewards
  evaluate_lib.main(argv)


# Exactness of micro-batching across processes: (baseline, normalisation, kl_mode, estimator).
# (tests/rl/test_accumulation.py covers the grid on one process.)
ACCUMULATION_CASES = (("loo", "sequence", "reward", "k1"),)


def accumulation_results() -> dict:
  """Loss, grad norm and per-leaf gradient sums of RL steps on `varied_episode`, for each
  case and 1 / 4 micro-batches, on the current processes' global 8-device mesh."""
  from score_jax.model import transformer as model_lib  # pylint: disable=import-outside-toplevel
  from score_jax.model.config import tiny  # pylint: disable=import-outside-toplevel
  from score_jax.rl import losses  # pylint: disable=import-outside-toplevel
  from score_jax.rl import step as step_lib  # pylint: disable=import-outside-toplevel
  from tests.episodes import KEEP_GRADS, varied_episode  # pylint: disable=import-outside-toplevel
  config = tiny("llama")
  mesh = mesh_lib.make_mesh(data=2, fsdp=-1, tensor=1)
  graphdef, params = model_lib.init_params(config, mesh, seed=0)
  ref = jax.tree.map(lambda x: x * 1.03, params)
  episode = jax.tree.map(lambda x: multihost.put_batch(x, mesh),
                         varied_episode(config.vocab_size))
  leaf_sums = jax.jit(lambda tree: [jnp.sum(x) for x in jax.tree.leaves(tree)],
                      out_shardings=jax.sharding.NamedSharding(mesh, jax.P()))
  out = {}
  for baseline, normalization, kl_mode, estimator in ACCUMULATION_CASES:
    cfg = losses.LossConfig(stage="stage2", beta1=0.3, baseline=baseline,
                            samples_per_prompt=2, normalization=normalization,
                            kl_mode=kl_mode, kl_estimator=estimator)
    for micro in (1, 4):
      step = step_lib.make_rl_step(graphdef, KEEP_GRADS, cfg, micro)
      state = step_lib.replicate_unsharded(KEEP_GRADS.init(params), mesh)
      _, grads, metrics = step(jax.tree.map(jnp.copy, params), state, ref, episode)
      out[f"{baseline}/{normalization}/{kl_mode}/{micro}"] = {
          "loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
          "leaf_sums": [float(x) for x in leaf_sums(grads)]}
  return out


def worker_accumulation(argv: list[str]) -> None:
  multihost.maybe_initialize_distributed(ml_collections.ConfigDict({"distributed": True}))
  out = accumulation_results()
  (pathlib.Path(argv[0]) / f"accumulation{jax.process_index()}.json").write_text(
      json.dumps(out))


WORKERS = {"train": worker_train, "checks": worker_checks, "eval": worker_eval,
           "accumulation": worker_accumulation}


# --- tests ---------------------------------------------------------------------------------


def test_two_processes_split_rows_gather_and_sample(tmp_path):
  launch("checks", [str(tmp_path)], processes=2, devices=4, log_dir=tmp_path, timeout=300)
  got = [json.loads((tmp_path / f"checks{i}.json").read_text()) for i in range(2)]
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  for i, g in enumerate(got):
    assert (g["process"], g["processes"], g["local_devices"], g["devices"]) == (i, 2, 4, 8)
    # Each process holds a contiguous half of the rows (so k | 4 keeps prompt groups).
    assert g["rows8"] == list(range(4 * i, 4 * i + 4)) and all(g["owned8"])
    assert g["global_row_sums8"] == x.sum(1).tolist()   # [3, 12, 21, ..., 66]
    assert g["local_rows8"] == x[4 * i:4 * i + 4].tolist()
    assert g["gather8"] == [f"row{r}" for r in range(8)]
    assert g["rows4"] == [0, 1, 2, 3] and all(g["owned4"]) == (i == 0)
    assert g["gather4"] == [f"p0r{r}" for r in range(4)]   # each row from its owner
    assert g["sum4"] == float(x[:4].sum()) == 66.0
    # Training layout: FSDP over 8 devices; sampling layout: nothing over fsdp.
    assert any("fsdp" in s for s in g["train_specs"])
    assert not any("fsdp" in s for s in g["sampling_specs"])
    # Process-local rows of the rollout are exactly those rows of the all-rows rollout.
    rows = g["local_rows"]
    assert rows == list(range(4 * i, 4 * i + 4))
    assert g["local_y1"] == [g["whole_y1"][r] for r in rows]
    assert g["local_y2"] == [g["whole_y2"][r] for r in rows]
    assert g["local_tokens"] == [g["whole_tokens"][r] for r in rows]
    np.testing.assert_allclose(g["local_logprobs"], [g["whole_logprobs"][r] for r in rows],
                               rtol=1e-6, atol=1e-6)
    assert g["copy_tokens"] == g["local_tokens"]
    assert g["gathered_y2"] == g["whole_y2"]
  assert got[0]["whole_y1"] == got[1]["whole_y1"]
  assert len(set(got[0]["whole_y1"])) > 1   # really sampled, not a constant


@pytest.mark.slow
def test_micro_batches_change_nothing_on_two_processes(tmp_path):
  """1 and 4 micro-batches give the same loss and gradient on 2 processes x 4 devices, and
  the same as on this process's 8 devices (weights are computed over the global batch).
  Slow (35-60 s); one process: tests/rl/test_accumulation.py."""
  launch("accumulation", [str(tmp_path)], processes=2, devices=4, log_dir=tmp_path,
         timeout=600)
  two = [json.loads((tmp_path / f"accumulation{i}.json").read_text()) for i in range(2)]
  assert two[0] == two[1]
  one = accumulation_results()
  for key, want in one.items():
    assert want["grad_norm"] > 1e-3, key
    for got in (two[0][key], two[0][key.rsplit("/", 1)[0] + "/1"]):
      np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5, err_msg=key)
      np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-5, err_msg=key)
      np.testing.assert_allclose(got["leaf_sums"], want["leaf_sums"], rtol=1e-4,
                                 atol=1e-4 * max(map(abs, want["leaf_sums"])), err_msg=key)


def test_row_split_on_one_process_is_everything():
  mesh = mesh_lib.make_mesh(fsdp=-1)
  split = multihost.row_split(mesh, 8)
  assert split.rows.tolist() == list(range(8)) and split.owned.all() and split.is_everything
  assert multihost.gather_rows(["a", "b", "c", "d", "e", "f", "g", "h"], split)[3] == "d"
  x = np.arange(16).reshape(8, 2)
  g = multihost.put_local_batch(x, mesh, split)
  assert g.sharding.spec == jax.P("fsdp", None)
  np.testing.assert_array_equal(multihost.local_rows(g, split), x)
  with pytest.raises(ValueError, match="7 rows given for the 8 local rows"):
    multihost.put_local_batch(x[:7], mesh, split)
  with pytest.raises(ValueError, match="3 items for a batch of 8"):
    split.take([1, 2, 3])


# --- 2 processes x 4 devices vs 1 process x 8 devices (slow) -------------------------------

RUN = ["--config", str(TINY), "--config.plan.sft_steps=2", "--config.plan.stage1_steps=2",
       "--config.plan.stage2_steps=2", "--config.checkpoint.every=2",
       "--config.checkpoint.keep=20", "--config.checkpoint.async_save=false",
       "--config.train.tensorboard=false", "--config.optim.lr=1e-3"]
TIMING = ("step_time_s", "rollout_time_s", "reshard_time_s", "tokens_per_s")


def _train(workdir, processes, log_dir):
  launch("train", [*RUN, "--workdir", str(workdir),
                   f"--config.distributed={processes > 1}"],
         processes=processes, devices=8 // processes, log_dir=log_dir, timeout=900)


def _final_params(workdir, step):
  c = build_lib.build(config_lib.load(TINY, []))
  params, meta, _ = checkpoint_lib.restore_params(pathlib.Path(workdir) / "checkpoints",
                                                  c.base_params, step)
  return jax.tree.map(np.asarray, params), meta


# Computed from the sampled texts: identical when both runs sample the same tokens.
SAMPLED = ("reward_t1", "reward_t2", "acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i",
           "answer_changed", "edit_distance_ratio", "len_t1", "len_t2")


def _assert_same_metrics(a_path, b_path):
  """Same sampled data exactly; losses and norms to float32 round-off (the two runs sum
  over devices in different orders: in-process vs gloo collectives)."""
  a, b = metrics_lib.read_jsonl(a_path), metrics_lib.read_jsonl(b_path)
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
  for ra, rb in zip(a, b):
    assert set(ra) == set(rb)
    for k in ra:
      if k in TIMING:
        continue
      if isinstance(ra[k], str) or k in SAMPLED:
        assert ra[k] == rb[k], (ra["step"], k, ra[k], rb[k])
      else:
        np.testing.assert_allclose(rb[k], ra[k], rtol=1e-5, atol=1e-5,
                                   err_msg=f"step {ra['step']} {k}")


def _assert_params_close(want, got):
  """Nearly every weight to 1e-6; every weight within a tenth of one Adam step (lr 1e-3).

  Adam divides by sqrt(v): a weight whose gradients are at round-off level moves by up to
  lr per step in a direction set by that round-off, so a few weights differ by ~lr/10.
  """
  total = close = 0
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4)
    total += a.size
    close += int(np.sum(np.abs(b - a) <= 1e-6 + 1e-5 * np.abs(a)))
  assert close >= 0.999 * total, f"{total - close} of {total} weights differ by > 1e-6"


def _truncate(src, dst, keep_step):
  """A copy of run `src` as it was after checkpoint `keep_step` (later ones removed)."""
  shutil.copytree(src, dst)
  for p in (dst / "checkpoints").iterdir():
    if p.name.isdigit() and int(p.name) > keep_step:
      shutil.rmtree(p)
  (dst / "train" / "metrics.jsonl").unlink()


@pytest.mark.slow
def test_two_processes_train_like_one_and_checkpoints_cross_over(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _train(one, 1, tmp_path)
  _train(two, 2, tmp_path)
  metrics_one = metrics_lib.read_jsonl(one / "train" / "metrics.jsonl")
  assert [r["stage"] for r in metrics_one] == ["sft"] * 2 + ["stage1"] * 2 + ["stage2"] * 2
  rl = metrics_one[2:]
  assert any(0 < r["reward_t2"] < 1 for r in rl)                  # rewards vary ...
  assert any(abs(r["pg_loss_t2"]) > 0 for r in rl)                 # ... and are trained on
  _assert_same_metrics(one / "train" / "metrics.jsonl", two / "train" / "metrics.jsonl")
  p_one, meta_one = _final_params(one, 6)
  p_two, meta_two = _final_params(two, 6)     # a 2-process checkpoint restored in 1 process
  assert meta_one["data_position"] == meta_two["data_position"]
  _assert_params_close(p_one, p_two)

  # The evaluator on 2 processes: one line per checkpoint (process 0 writes), the numbers
  # of a 1-process evaluation of the same checkpoint.
  one_eval2 = tmp_path / "one_eval2"
  shutil.copytree(one, one_eval2)
  for workdir, processes in ((one, 1), (one_eval2, 2)):
    launch("eval", [*RUN, "--workdir", str(workdir), "--once",
                    f"--config.distributed={processes > 1}"],
           processes=processes, devices=8 // processes, log_dir=tmp_path, timeout=600)
  e_one = metrics_lib.read_jsonl(one / "eval" / "metrics.jsonl")
  e_two = metrics_lib.read_jsonl(one_eval2 / "eval" / "metrics.jsonl")
  assert [r["step"] for r in e_one] == [r["step"] for r in e_two] == [6]
  assert e_one[0]["n"] == e_two[0]["n"] > 0
  for key in ("acc_t1", "acc_t2", "delta"):   # greedy decoding on 1x8 vs 2x4 meshes
    assert abs(e_one[0][key] - e_two[0][key]) <= 2 / e_one[0]["n"], (key, e_one, e_two)

  # Resume across the switch: 2 processes continue the 1-process run from step 4, and
  # 1 process continues the 2-process run from step 4; both end where the others did.
  one_then_two, two_then_one = tmp_path / "one_then_two", tmp_path / "two_then_one"
  _truncate(one, one_then_two, 4)
  _truncate(two, two_then_one, 4)
  _train(one_then_two, 2, tmp_path)
  _train(two_then_one, 1, tmp_path)
  for resumed, straight in ((one_then_two, p_one), (two_then_one, p_two)):
    rows = metrics_lib.read_jsonl(resumed / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 6]
    got, _ = _final_params(resumed, 6)
    _assert_params_close(straight, got)


if __name__ == "__main__":
  WORKERS[sys.argv[1]](sys.argv[2:])
