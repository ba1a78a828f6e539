"""The start-up summary (score_jax.startup) on the tiny config, built for real.

Hand-computed: the tiny model (vocabulary V = the char tokenizer's 102 symbols, D = 32,
F = 64, 4 query heads and 2 kv heads of 8, 2 layers, tied embeddings) has per layer
q 32*4*8 + k 32*2*8 + v 32*2*8 + o 4*8*32 = 3,072 attention weights, 3*32*64 = 6,144 MLP
weights and 2*32 norm scales (9,280), so 2*9,280 + 102*32 + 32 (final norm) = 21,856.
The toy task has 2,000 / 200 / 200 train / validation / test problems.
"""

import pytest

from score_jax import build as build_lib
from score_jax import config_lib
from score_jax import startup
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"


@pytest.fixture(scope="module")
def tiny():
  return build_lib.build(config_lib.load(TINY, ["--config.eval.validation_every=2",
                                                "--config.eval.validation_limit=50"]))


def test_param_count_by_hand(tiny):
  assert tiny.tokenizer.vocab_size == 102
  assert startup.param_count(tiny.base_params) == 2 * 9280 + 102 * 32 + 32 == 21856


def test_split_sizes_count_each_split_once(tiny):
  splits = startup.run_splits(tiny.config)
  assert splits == ["train", "test", "validation"]
  assert startup.split_sizes(tiny.task, splits) == {"train": 2000, "test": 200,
                                                    "validation": 200}
  assert startup.split_sizes(tiny.task, ["train", "nope"], known={"train": 7}) == {
      "train": 7, "nope": None}


def test_summary_block(tiny):
  sizes = startup.split_sizes(tiny.task, startup.run_splits(tiny.config))
  text = startup.summary(tiny, workdir="/runs/tiny", source="configs/tiny.py", sizes=sizes)
  lines = text.splitlines()
  assert lines[0] == "score_jax train: start-up"
  assert lines[1].startswith("  devices    8 x cpu (") and lines[1].endswith(
      "1 process(es); mesh data=1 fsdp=8 tensor=1")
  assert lines[2:] == [
      "  model      llama, 2 layers, D=32 F=64, 4 heads / 2 kv of 8; 21,856 (21.9K) "
      "parameters (float32, compute float32); random init (seed 0)",
      "  tokenizer  char (CharTokenizer), vocab 102 (model 102); chat format plain",
      "  data       toy: train 'train' 2,000 | eval 'test' 32 of 200 | validation "
      "'validation' 50 of 200 every 2 steps",
      "  plan       sft 4 -> stage1 2 -> stage2 2: 8 steps, 2 attempts",
      "  workdir    /runs/tiny",
      "  config     configs/tiny.py"]
  nothing = {**sizes, "test": None}
  text = startup.summary(tiny, workdir="w", source="s", sizes=nothing, what="evaluate")
  assert text.startswith("score_jax evaluate: start-up")
  assert "eval 'test' (no such split)" in text


def test_counts_read_in_thousands_millions_billions():
  assert startup._count(999) == "999"                       # pylint: disable=protected-access
  assert startup._count(268_098_176) == "268,098,176 (268.1M)"   # pylint: disable=protected-access
  assert startup._count(2_614_341_888) == "2,614,341,888 (2.6B)"  # pylint: disable=protected-access
