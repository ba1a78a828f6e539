"""The real-model configs: their settings, and the real pipeline on tiny random models.

For each config in configs/ that names a real checkpoint family, a tiny random HF model of
that family (tests/hf_tiny.py: its tokenizer.json has the family's special tokens, EOS /
BOS / pad and official chat template) stands in for the real checkpoint, and the REAL task
data of ../shared/data is used: the Trainer runs one Stage I and one Stage II step with
the config as written, except tiny batch / attempt lengths / steps and float32 compute;
then `evaluate.run` evaluates the last checkpoint greedily. The tests check the metrics
files, checkpoints and recorded fields, and that the family's tokens reach the sampler.

Default run: the settings, gemma2_2b_math end to end, and focused checks of the pipeline
with real tokenizers (prompt truncation, padded vocabularies, required fields). The other
families end to end are @pytest.mark.slow (each 1-3 min of XLA compilation on CPU).

The bugs these tests found (vocabulary padding, truncated prompts losing BOS and the chat
header, required fields, other tasks' eval results, remat of checkpoint models) are fixed;
each test stays as its regression test.
"""

import ast
import json
import pathlib
import re
import shlex

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests import hf_tiny  # noqa: E402
from score_jax import build as build_lib  # noqa: E402
from score_jax import checkpoint as checkpoint_lib  # noqa: E402
from score_jax import config_lib  # noqa: E402
from score_jax import evaluate  # noqa: E402
from score_jax import metrics as metrics_lib  # noqa: E402
from score_jax import sampler as sampler_lib  # noqa: E402
from score_jax import train  # noqa: E402
from score_jax.rl import plan as plan_lib  # noqa: E402
from score_jax.tasks import code as code_tasks  # noqa: E402
from score_jax.text import chat as chat_lib  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402

CONFIGS = REPO_ROOT / "configs"
# config name -> (tiny model family, task, extra embedding rows beyond the tokenizer)
REAL = {
    "gemma2_2b_math": ("gemma2", "math", 0),
    # Qwen2.5's embedding has more rows than its tokenizer has ids (151,936 vs 151,665).
    "qwen2p5_1p5b_math": ("qwen2.5", "math", 64),
    "gemma_2b_mbpp": ("gemma", "mbpp", 0),
    "llama3_8b_math": ("llama3", "math", 0),
}


def _config_path(name: str) -> pathlib.Path:
  return CONFIGS / f"{name}.py"


# ----------------------------------------------------------------------------- the settings

def test_math_configs_have_the_papers_math_hyperparameters():
  """Kumar et al. 2024, Table 5 (MATH): Adam, lr 5e-6, 3000 steps, temperature 1.0,
  alpha 10, beta1 0.01, beta2 0.1."""
  for name in ("gemma2_2b_math", "qwen2p5_1p5b_math", "llama3_8b_math"):
    c = config_lib.load(_config_path(name))
    assert c.optim.name == "adam" and c.optim.lr == 5e-6, name
    assert c.plan.stages == "stage1,stage2", name
    assert (c.plan.stage1_steps, c.plan.stage2_steps) == (1000, 2000), name
    assert c.rollout.temperature == 1.0, name
    assert (c.rl.alpha, c.rl.beta1, c.rl.beta2) == (10.0, 0.01, 0.1), name
    assert (c.task.name, c.task.train_split, c.task.eval_split) == ("math", "train", "test")
    assert (c.rollout.max_prompt_len, c.rollout.max_turn1_tokens,
            c.rollout.max_turn2_tokens) == (512, 1024, 1024), name
    assert (c.eval.max_turn1_tokens, c.eval.max_turn2_tokens) == (1024, 1024), name
    # 32 problems x 4 samples = 128 episodes, 16 micro-batches of 8 rows.
    assert c.train.batch_size * c.rollout.samples_per_prompt == 128, name
    assert c.train.batch_size * c.rollout.samples_per_prompt // c.train.micro_batches == 8


def test_mbpp_config_has_the_papers_mbpp_hyperparameters():
  """Table 5 (MBPP): Adam, lr 1e-5, 1500 steps, batch 128, alpha 10, beta1 0.01,
  beta2 0.25; trains on MBPP train, evaluates on MBPP test."""
  c = config_lib.load(_config_path("gemma_2b_mbpp"))
  assert c.optim.name == "adam" and c.optim.lr == 1e-5
  assert (c.plan.stage1_steps, c.plan.stage2_steps) == (500, 1000)
  assert c.train.batch_size * c.rollout.samples_per_prompt == 128
  assert (c.rl.alpha, c.rl.beta1, c.rl.beta2) == (10.0, 0.01, 0.25)
  assert c.rollout.temperature == 1.0
  assert (c.task.name, c.task.train_split, c.task.eval_split) == ("mbpp", "train", "test")
  assert (c.rollout.max_prompt_len, c.rollout.max_turn1_tokens,
          c.rollout.max_turn2_tokens) == (1024, 512, 512)


@pytest.mark.parametrize("name", list(REAL))
def test_real_config_common_settings(name):
  c = config_lib.load(_config_path(name))
  family = REAL[name][0]
  assert c.init.checkpoint == "" and tuple(c.required_fields) == ("init.checkpoint",)
  assert c.tokenizer.kind == "auto" and c.tokenizer.path == ""
  assert c.chat_format == hf_tiny.FAMILIES[family].chat_format
  assert (c.model.dtype, c.model.param_dtype) == ("bfloat16", "float32")
  assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (1, -1, 1)
  assert c.rl.baseline == "loo" and c.rollout.samples_per_prompt >= 2
  # Leave-one-out needs each problem's k samples in one micro-batch: rows per micro-batch
  # (episodes / micro_batches) must be a multiple of k.
  rows = c.train.batch_size * c.rollout.samples_per_prompt // c.train.micro_batches
  assert rows * c.train.micro_batches == c.train.batch_size * c.rollout.samples_per_prompt
  assert rows % c.rollout.samples_per_prompt == 0
  assert c.checkpoint.keep_best and c.checkpoint.every > 0
  plan_lib.validate(_with_checkpoint(c))   # everything else in it is valid


def _with_checkpoint(c):
  c = c.copy_and_resolve_references()
  c.init.checkpoint = "/some/checkpoint"
  return c


def _docstring_commands(path: pathlib.Path) -> list[list[str]]:
  """The `python -m score_jax.*` commands of a config's docstring, as argv lists."""
  doc = ast.get_docstring(ast.parse(path.read_text()))
  commands = re.findall(r"^ *(python -m score_jax\.\w+ .*?)(?=\n\n|\Z)", doc, re.M | re.S)
  return [shlex.split(cmd.replace("\\\n", " ")) for cmd in commands]


@pytest.mark.parametrize("name", list(REAL))
def test_docstring_commands_parse(name, monkeypatch):
  """Each command in the docstring names this config and only fields that exist."""
  monkeypatch.chdir(REPO_ROOT)
  commands = _docstring_commands(_config_path(name))
  modules = [argv[2] for argv in commands]
  assert "score_jax.main" in modules and "score_jax.evaluate" in modules
  for argv in commands:
    args = [a.replace("$HOME", "/home/u") for a in argv[3:]]
    config, parsed = config_lib.parse(args, "")
    assert parsed.config == f"configs/{name}.py"
    assert parsed.workdir.startswith("gs://BUCKET/runs/")
    assert config.init.checkpoint.startswith("/home/u/models/")
    assert config.distributed == (argv[2] == "score_jax.main")


def test_mbpp_docstring_documents_the_humaneval_eval():
  commands = _docstring_commands(_config_path("gemma_2b_mbpp"))
  humaneval = [a for a in commands if "--config.task.name=humaneval" in a]
  assert len(humaneval) == 1 and humaneval[0][2] == "score_jax.evaluate"
  assert "--config.task.eval_split=test" in humaneval[0]


# ----------------------------------------------------------------------------- the checkpoint is required

@pytest.mark.parametrize("name", list(REAL))
def test_missing_checkpoint_fails_naming_the_field(name):
  c = config_lib.load(_config_path(name))
  try:
    plan_lib.validate(c)
    message = "(no error)"
  except ValueError as e:
    message = str(e)
  assert "config.init.checkpoint" in message and "--config.init.checkpoint=" in message


def test_trainer_without_checkpoint_fails_before_building(tmp_path, shared_data):
  c = config_lib.load(_config_path("gemma2_2b_math"), [f"--config.task.data_dir={shared_data}"])
  with pytest.raises(ValueError) as e:
    train.Trainer(c, tmp_path / "w")
  assert "config.init.checkpoint" in str(e.value)
  assert not (tmp_path / "w" / "checkpoints").exists()


# ----------------------------------------------------------------------------- the real pipeline

def _corpus(data: pathlib.Path) -> list[str]:
  """Real text for the tiny tokenizers' merges (so prompt lengths are realistic-ish)."""
  with open(data / "math" / "prm800k_style_train12k.reconstructed.jsonl") as f:
    math = [json.loads(line)["problem"] for _, line in zip(range(300), f)]
  mbpp = code_tasks.MBPPTask(data)
  return math + [p.prompt for p in mbpp.load("train")[:20]]


@pytest.fixture(scope="module")
def corpus(shared_data):
  return _corpus(shared_data)


def tiny_overrides(checkpoint: pathlib.Path, data: pathlib.Path) -> list[str]:
  """The real config, at toy size: 2 problems x 2 samples, 8-token attempts, 1+1 steps."""
  return [f"--config.init.checkpoint={checkpoint}", f"--config.task.data_dir={data}",
          "--config.train.batch_size=2", "--config.rollout.samples_per_prompt=2",
          "--config.train.micro_batches=2",
          "--config.rollout.max_turn1_tokens=8", "--config.rollout.max_turn2_tokens=8",
          # The tiny tokenizers need ~2x the real ones' tokens for the turn-2 instruction.
          "--config.rollout.max_instruction_len=256",
          "--config.eval.max_turn1_tokens=8", "--config.eval.max_turn2_tokens=8",
          "--config.eval.batch_size=4", "--config.task.eval_limit=4",
          "--config.task.workers=2",
          "--config.plan.stage1_steps=1", "--config.plan.stage2_steps=1",
          "--config.model.dtype=float32", "--config.checkpoint.every=1"]


def tiny_checkpoint(directory: pathlib.Path, name: str, corpus) -> pathlib.Path:
  family, _, padding = REAL[name]
  return hf_tiny.make_checkpoint(directory, family, corpus=corpus, vocab_padding=padding)


def run_real_config(name: str, directory: pathlib.Path, data: pathlib.Path, corpus):
  """Trains `name` at toy size (Stage I step, Stage II step) in directory/run."""
  checkpoint = tiny_checkpoint(directory / "ckpt", name, corpus)
  config = config_lib.load(_config_path(name), tiny_overrides(checkpoint, data))
  workdir = directory / "run"
  trainer = train.Trainer(config, workdir)
  last = trainer.run()
  return config, checkpoint, workdir, trainer, last


def check_run(name, config, checkpoint, workdir, trainer, last):
  """The run's components, metrics, checkpoints, and one eval of its last checkpoint."""
  import transformers  # pylint: disable=import-outside-toplevel
  family = hf_tiny.FAMILIES[REAL[name][0]]
  c = trainer.c
  # The checkpoint's tokenizer, the family's chat format and model.
  assert c.tokenizer.path == str(checkpoint / "tokenizer.json")
  assert c.chat.name == family.chat_format and c.model_config.family == family.model_family
  assert c.model_config.vocab_size == c.tokenizer.vocab_size + REAL[name][2]
  two_turn = trainer.two_turn
  assert two_turn.eot_id == c.tokenizer.token_id(family.end_of_turn)
  assert c.tokenizer.eos_id == c.tokenizer.token_id(family.eos)
  assert {two_turn.eot_id, c.tokenizer.eos_id} <= set(two_turn.stop_ids)
  # A real problem's turn-1 prompt is what the official chat template makes of it.
  problem = trainer.train_problems[0]
  tokens, valid, truncated = two_turn.encode_prompts([problem])
  assert truncated == 0
  official = transformers.AutoTokenizer.from_pretrained(str(checkpoint)).apply_chat_template(
      [{"role": "user", "content": problem.prompt}], add_generation_prompt=True,
      tokenize=True, return_dict=False)
  assert tokens[0][valid[0]].tolist() == list(official)

  rows = metrics_lib.read_jsonl(workdir / "train" / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2]
  assert [r["stage"] for r in rows] == ["stage1", "stage2"]
  for r in rows:
    assert r["skipped"] == 0 and np.isfinite(r["loss"])
    for key in ("reward_t1", "reward_t2", "delta", "delta_i2c", "delta_c2i", "kl_t1",
                "answer_changed", "len_t1", "len_t2", "grad_norm", "lr"):
      assert key in r, key
    assert r["lr"] == config.optim.lr
    assert r["delta"] == pytest.approx(r["delta_i2c"] - r["delta_c2i"])
    assert 0 < r["len_t1"] <= 8 and 0 < r["len_t2"] <= 8
  assert last["stage"] == "stage2"
  reader = checkpoint_lib.Checkpointer(workdir / "checkpoints", read_only=True, keep_best=False)
  assert reader.all_steps() == [1, 2]
  meta = reader.restore_meta(2)
  assert meta["stage"] == "stage2" and meta["step"] == 2 and meta["data_position"] == 4
  assert meta["config"]["init"]["checkpoint"] == str(checkpoint)
  assert (workdir / "models" / "stage1").is_dir()
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["chat_format"] == family.chat_format and saved["tokenizer"]["kind"] == "auto"

  # One eval of the last checkpoint on the real eval split.
  lines = evaluate.run(config, workdir, once=True)
  assert len(lines) == 1 and lines[0]["step"] == 2 and lines[0]["stage"] == "stage2"
  line = metrics_lib.read_jsonl(workdir / "eval" / "metrics.jsonl")[-1]
  assert line["n"] == 4
  for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "answer_changed",
              "edit_distance_ratio"):
    assert key in line, key
  assert line["delta"] == pytest.approx(line["delta_i2c"] - line["delta_c2i"], abs=1e-12)
  samples = metrics_lib.read_jsonl(workdir / "eval" / "samples" / "2.jsonl")
  problems = evaluate.eval_problems(c)
  assert [s["uid"] for s in samples] == [p.uid for p in problems]
  assert [p.uid for p in problems[:1]] == [{"math": "test/precalculus/807.json",
                                             "mbpp": "mbpp/11"}[config.task.name]]
  for s in samples:
    assert isinstance(s["y1"], str) and isinstance(s["y2"], str)
    assert s["r1"] in (0.0, 1.0) and s["r2"] in (0.0, 1.0)


def test_gemma2_math_one_stage1_one_stage2_step_and_eval(tmp_path, shared_data, corpus):
  run = run_real_config("gemma2_2b_math", tmp_path, shared_data, corpus)
  check_run("gemma2_2b_math", *run)


@pytest.mark.slow
def test_llama3_math_one_stage1_one_stage2_step_and_eval(tmp_path, shared_data, corpus):
  run = run_real_config("llama3_8b_math", tmp_path, shared_data, corpus)
  check_run("llama3_8b_math", *run)


@pytest.mark.slow
def test_qwen25_math_one_stage1_one_stage2_step_and_eval(tmp_path, shared_data, corpus):
  """Qwen2.5: no BOS, ChatML with the default system turn, a padded embedding."""
  run = run_real_config("qwen2p5_1p5b_math", tmp_path, shared_data, corpus)
  check_run("qwen2p5_1p5b_math", *run)


@pytest.fixture(scope="module")
def mbpp_run(tmp_path_factory, shared_data, corpus):
  return run_real_config("gemma_2b_mbpp", tmp_path_factory.mktemp("mbpp"), shared_data, corpus)


@pytest.mark.slow
def test_gemma_mbpp_one_stage1_one_stage2_step_and_eval(mbpp_run):
  """Gemma 1: MBPP train (3-shot prompts, rewards from the sandbox), eval on MBPP test."""
  assert [p.uid for p in mbpp_run[3].train_problems[:1]] == ["mbpp/601"]
  check_run("gemma_2b_mbpp", *mbpp_run)


@pytest.mark.slow
def test_humaneval_eval_of_the_mbpp_checkpoints(mbpp_run, shared_data):
  """The docstring's HumanEval command on the same workdir, after the MBPP eval."""
  config, checkpoint, workdir, _, _ = mbpp_run
  if not (workdir / "eval" / "metrics.jsonl").is_file():
    evaluate.run(config, workdir, once=True)
  he = config_lib.load(_config_path("gemma_2b_mbpp"), [
      *tiny_overrides(checkpoint, shared_data), "--config.task.name=humaneval",
      "--config.task.eval_split=test"])
  lines = evaluate.run(he, workdir, once=True)
  assert len(lines) == 1 and lines[0]["step"] == 2 and lines[0]["n"] == 4
  # The MBPP results stay where they were; HumanEval's go next to them.
  assert len(metrics_lib.read_jsonl(workdir / "eval" / "metrics.jsonl")) == 1
  rows = metrics_lib.read_jsonl(workdir / "eval_humaneval_test" / "metrics.jsonl")
  assert [r["step"] for r in rows] == [2]
  samples = metrics_lib.read_jsonl(workdir / "eval_humaneval_test" / "samples" / "2.jsonl")
  assert [s["uid"] for s in samples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2",
                                         "HumanEval/3"]


# ----------------------------------------------------------------------------- focused checks

def _components(name, tmp_path, data, corpus, *extra):
  checkpoint = tiny_checkpoint(tmp_path / "ckpt", name, corpus)
  config = config_lib.load(_config_path(name), [*tiny_overrides(checkpoint, data), *extra])
  return build_lib.build(config)


def test_a_truncated_prompt_keeps_bos_and_the_chat_head(tmp_path, shared_data, corpus):
  """MBPP's longest 3-shot prompts exceed the 1024-token budget (2 of 500 test prompts with
  Gemma's tokenizer): cutting from the left must not drop <bos><start_of_turn>user."""
  c = _components("gemma_2b_mbpp", tmp_path, shared_data, corpus)
  two_turn = c.two_turn(8, 8)
  problems = c.task.load("test")
  longest = max(problems, key=lambda p: len(p.prompt))
  tokens, valid, truncated = two_turn.encode_prompts([longest])
  assert truncated == 1 and valid[0].all()
  full = chat_lib.first_turn_ids(c.chat, c.tokenizer, longest.prompt)
  head = c.tokenizer.encode("<start_of_turn>user\n", add_bos=True)
  assert len(full) > 1024 and full[:len(head)] == head
  ids = tokens[0].tolist()
  assert ids[-900:] == full[-900:]         # the end (the task and the generation prompt) stays
  assert ids[:len(head)] == head           # ... and so must the start


def test_config_model_settings_apply_to_the_checkpoint_model(tmp_path, shared_data, corpus):
  c = _components("gemma2_2b_math", tmp_path, shared_data, corpus)
  assert c.model_config.dtype == c.config.model.dtype == "float32"
  assert c.model_config.param_dtype == "float32"
  assert c.model_config.remat == c.config.model.remat == "full"
  assert c.model_config.attention == c.config.model.attention == "auto"


def test_rollout_never_samples_ids_the_tokenizer_lacks(tmp_path, shared_data, corpus):
  """Qwen2.5's embedding is larger than its tokenizer: sampling at temperature 1 from a
  near-uniform (random) model draws the 64 padding ids of 576 unless they are masked."""
  c = _components("qwen2p5_1p5b_math", tmp_path, shared_data, corpus,
                  "--config.rollout.max_prompt_len=128")
  assert c.model_config.vocab_size - c.tokenizer.vocab_size == 64
  problems = [p for p in c.task.load("test")[:2] for _ in range(2)]
  result = c.two_turn(8, 8).rollout(c.base_params, c.base_params, problems,
                                    method=sampler_lib.Temperature(1.0),
                                    rng=jax.random.key(0))
  ep = result.episode
  assert ep.tokens_BT[ep.turn1_mask_BT | ep.turn2_mask_BT].max() < c.tokenizer.vocab_size


# ----------------------------------------------------------------------------- Gemma 3 270M (GGUF)

def test_gemma3_270m_gsm8k_config(monkeypatch):
  """The base-model GGUF config: 4-shot GSM8K, plain chat, valid once a checkpoint is given,
  and the docstring's commands name this config and only fields that exist."""
  path = _config_path("gemma3_270m_gsm8k")
  c = config_lib.load(path)
  assert tuple(c.required_fields) == ("init.checkpoint",) and c.init.checkpoint == ""
  assert (c.task.name, c.task.num_shots, c.chat_format) == ("gsm8k", 4, "plain")
  assert c.model.family == "gemma3" and c.train.logit_chunk == 256
  rows = c.train.batch_size * c.rollout.samples_per_prompt // c.train.micro_batches
  assert rows % c.rollout.samples_per_prompt == 0
  # 4-shot test prompts are 453-701 Gemma tokens (score_jax/tasks/gsm8k.py, the config)
  assert c.rollout.max_prompt_len >= 701
  plan_lib.validate(_with_checkpoint(c))
  with pytest.raises(ValueError, match="--config.init.checkpoint="):
    plan_lib.validate(c)
  monkeypatch.chdir(REPO_ROOT)
  doc = ast.get_docstring(ast.parse(path.read_text()))
  commands = [[module, *shlex.split(args.replace("\\\n", " "))] for module, args in re.findall(
      r"python -m (score_jax\.(?:main|evaluate)) (.*?)(?=\n\n|\Z)", doc, re.S)]
  assert [module for module, *_ in commands] == ["score_jax.evaluate", "score_jax.main",
                                                 "score_jax.main", "score_jax.evaluate"]
  for _, *args in commands:       # evaluate's own flags: --step 0, --once
    args = " ".join(args).replace(" --step 0", "").replace(" --once", "").split()
    config, parsed = config_lib.parse([a.replace("$GGUF", "/m.gguf") for a in args], "")
    assert parsed.config == "configs/gemma3_270m_gsm8k.py"
    assert config.init.checkpoint == "/m.gguf" and config.task.data_dir == "data"
    config_lib.check_ranges(config)
