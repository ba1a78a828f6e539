"""`python -m score_jax.data prepare ...` and the start-up data check, offline.

Small made-up records in the upstream formats (tests/fixtures/data_upstream) go through every
input form (MATH.tar and its folder, PRM800K's jsonl pair, Hub Parquet files, a Hub cache
snapshot read with HF_HUB_OFFLINE=1); the outputs are read back by the task readers. On the
real upstream copies in ../shared/data, `prepare` reproduces its files byte for byte. The real
configs fail at start, before loading weights, when task.data_dir lacks the data.
"""

import gzip
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

from score_jax.data import common
from score_jax.data import hendrycks_math
from score_jax.data import layout
from score_jax.data import prepare as prepare_lib
from tests.conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "data_upstream"


def _prepare(name, out, source=None, **kw):
  lines = []
  folders = prepare_lib.prepare(name, out, source, log=lines.append, **kw)
  return folders, "\n".join(lines)


def _sums(folder: pathlib.Path) -> dict[str, str]:
  return {line.split()[1]: line.split()[0]
          for line in (folder / "SHA256SUMS").read_text().splitlines()}


def _check_sums(folder: pathlib.Path) -> None:
  for name, digest in _sums(folder).items():
    assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def _humaneval_gz(tmp_path) -> pathlib.Path:
  src = tmp_path / "he_src" / "HumanEval.jsonl.gz"
  src.parent.mkdir()
  src.write_bytes(gzip.compress((FIXTURES / "humaneval/data/HumanEval.jsonl").read_bytes()))
  return src


def _run(args, env=None, timeout=120):
  return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=timeout)


# ---- the layout the tasks read

def test_layout_matches_the_task_readers():
  from score_jax.tasks import code  # pylint: disable=import-outside-toplevel
  from score_jax.tasks.gsm8k import GSM8KTask  # pylint: disable=import-outside-toplevel
  from score_jax.tasks.math.task import MathTask  # pylint: disable=import-outside-toplevel
  for task_cls in (MathTask, GSM8KTask):
    files = layout.TASK_FILES[task_cls.name]
    assert {s: files[s][0] for s in task_cls.files} == dict(task_cls.files)
    assert files["validation"] == files["train"]
  assert set(layout.TASK_FILES["mbpp"]) == set(code.MBPP_SPLITS)
  assert set(layout.TASK_FILES["humaneval"]) == set(code.HumanEvalTask.splits)


def test_boxed_answer():
  assert hendrycks_math.boxed_answer("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
  assert hendrycks_math.boxed_answer("is $\\boxed 2$.") == "2"
  assert hendrycks_math.boxed_answer("$\\boxed 3$ then $\\boxed{17}$.") == "17"
  assert hendrycks_math.boxed_answer("$\\fbox{4}$") == "4"
  assert hendrycks_math.boxed_answer("no box") is None


# ---- each dataset from the fixtures, read back by its task

def test_math_from_per_problem_files(tmp_path):
  from score_jax.tasks.math.task import MathTask  # pylint: disable=import-outside-toplevel
  _, log = _prepare("math", tmp_path, FIXTURES / "math")
  assert "math/train.jsonl: 4 records" in log and "math/test.jsonl: 4 records" in log
  assert "prm800k_style_train12k.reconstructed.jsonl: 6 records" in log
  assert "math500/test.jsonl: 2 records (WARNING: the upstream has 500)" in log
  for folder in ("math", "math500"):
    _check_sums(tmp_path / folder)
    assert "Built by : python -m score_jax.data prepare math" in (
        tmp_path / folder / "SOURCE.txt").read_text()
  task = MathTask(tmp_path)
  test = task.load("test")  # MATH500, in PRM800K's order
  assert [p.uid for p in test] == ["test/precalculus/807.json", "test/algebra/2584.json"]
  assert [p.answer for p in test] == ["\\frac{1}{2}", "2"]
  assert len(task.load("test_full")) == 4
  k12 = [json.loads(l) for l in (tmp_path / layout.MATH_12K).read_text().splitlines()]
  assert [r["unique_id"] for r in k12] == [
      "test/algebra/1.json", "test/counting_and_probability/9.json", "train/algebra/0.json",
      "train/algebra/12.json", "train/geometry/7.json", "train/number_theory/3.json"]
  assert [r["answer"] for r in k12] == ["2", "6", "7", "5", "9", "2"]
  assert [r["level"] for r in k12][-1] == "?" and list(k12[0]) == list(hendrycks_math.PRM_KEYS)


def test_math_input_forms_agree(tmp_path):
  """MATH.tar.gz, its folder, and PRM800K's 12k/500 jsonl pair give the same bytes."""
  _prepare("math", tmp_path / "dir", FIXTURES / "math")
  tar = tmp_path / "MATH.tar.gz"
  with tarfile.open(tar, "w:gz") as t:
    t.add(FIXTURES / "math" / "MATH", arcname="MATH")
  _prepare("math", tmp_path / "tar", tar)
  prm = tmp_path / "math_splits"
  prm.mkdir()
  shutil.copy(tmp_path / "dir" / layout.MATH_12K, prm / "train.jsonl")
  shutil.copy(tmp_path / "dir/math500/test.jsonl", prm / "test.jsonl")
  _prepare("math", tmp_path / "prm", prm)
  _prepare("math500", tmp_path / "m500", prm / "test.jsonl")
  for out in ("tar", "prm"):
    for folder in ("math", "math500"):
      assert _sums(tmp_path / out / folder) == _sums(tmp_path / "dir" / folder), (out, folder)
  assert not (tmp_path / "m500" / "math").exists()
  assert _sums(tmp_path / "m500/math500") == _sums(tmp_path / "dir/math500")


def test_gsm8k(tmp_path):
  from score_jax.tasks.gsm8k import GSM8KTask  # pylint: disable=import-outside-toplevel
  _, log = _prepare("gsm8k", tmp_path, FIXTURES / "gsm8k")
  assert "gsm8k/train.jsonl: 3 records (WARNING: the upstream has 7473)" in log
  for name in ("train.jsonl", "test.jsonl"):  # already in the upstream form: copied as is
    assert (tmp_path / "gsm8k" / name).read_bytes() == (
        FIXTURES / "gsm8k/grade_school_math/data" / name).read_bytes()
  assert not (tmp_path / "gsm8k/test_socratic.jsonl").exists()
  _check_sums(tmp_path / "gsm8k")
  assert [p.answer for p in GSM8KTask(tmp_path).load("test")] == ["6", "120"]


def test_mbpp(tmp_path):
  from score_jax.tasks.code import MBPPTask  # pylint: disable=import-outside-toplevel
  _, log = _prepare("mbpp", tmp_path, FIXTURES / "mbpp")
  for line in ("prompt (task_id 1-10): 3", "test (task_id 11-510): 1",
               "validation (task_id 511-600): 1", "train (task_id 601-974): 1",
               "sanitized-mbpp.json: 3 records"):
    assert line in log
  ids = [json.loads(l)["task_id"] for l in (tmp_path / "mbpp/mbpp.jsonl").read_text().splitlines()]
  assert ids == [2, 3, 4, 11, 511, 601]  # sorted, as upstream
  sanitized = json.loads((tmp_path / "mbpp/sanitized-mbpp.json").read_text())
  assert [r["task_id"] for r in sanitized] == [11, 511, 601]
  task = MBPPTask(tmp_path)
  assert [p.uid for p in task.load("train")] == ["mbpp/601"]
  assert task.load("test")[0].answer["setup"] == "import math"


def test_humaneval(tmp_path):
  from score_jax.tasks.code import HumanEvalTask  # pylint: disable=import-outside-toplevel
  src = _humaneval_gz(tmp_path)
  _prepare("humaneval", tmp_path / "gz", src.parent)
  assert (tmp_path / "gz/humaneval/HumanEval.jsonl.gz").read_bytes() == src.read_bytes()
  _prepare("humaneval", tmp_path / "plain", FIXTURES / "humaneval")
  assert (tmp_path / "plain/humaneval/HumanEval.jsonl").read_bytes() == (
      FIXTURES / "humaneval/data/HumanEval.jsonl").read_bytes()
  for out in ("gz", "plain"):
    assert [p.uid for p in HumanEvalTask(tmp_path / out).load("test")] == [
        "HumanEval/0", "HumanEval/1"]


def test_hub_parquet_files_give_the_same_bytes(tmp_path):
  """The Hub's Parquet layouts (as downloaded) give the files of the upstream jsonl."""
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")

  def parquet(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)

  _prepare("mbpp", tmp_path / "ref", FIXTURES / "mbpp")
  mbpp = common.read_records(FIXTURES / "mbpp/mbpp/mbpp.jsonl")
  sanitized = common.read_records(FIXTURES / "mbpp/mbpp/sanitized-mbpp.json")
  hub = tmp_path / "hub_mbpp"
  parquet(hub / "full/train-00000-of-00001.parquet", mbpp[:1])
  parquet(hub / "full/test-00000-of-00001.parquet", mbpp[1:])
  parquet(hub / "sanitized/test-00000-of-00001.parquet", sanitized)
  _prepare("mbpp", tmp_path / "out", hub)
  assert _sums(tmp_path / "out/mbpp") == _sums(tmp_path / "ref/mbpp")

  he = common.read_records(FIXTURES / "humaneval/data/HumanEval.jsonl")
  parquet(tmp_path / "hub_he/openai_humaneval/test-00000-of-00001.parquet",
          [{k: r[k] for k in ("task_id", "prompt", "canonical_solution", "test",
                              "entry_point")} for r in he])
  _prepare("humaneval", tmp_path / "out", tmp_path / "hub_he")
  assert (tmp_path / "out/humaneval/HumanEval.jsonl").read_bytes() == (
      FIXTURES / "humaneval/data/HumanEval.jsonl").read_bytes()

  # MATH: nlile/hendrycks-MATH-benchmark (12k / 500 Parquet) + HuggingFaceH4/MATH-500.
  _prepare("math", tmp_path / "ref", FIXTURES / "math")
  k12 = common.read_records(tmp_path / "ref" / layout.MATH_12K)
  m500 = common.read_records(tmp_path / "ref/math500/test.jsonl")
  parquet(tmp_path / "hub_math/nlile/data/train-00000-of-00001.parquet",
          [r for r in k12 if r["level"] != "?"])
  parquet(tmp_path / "hub_math/nlile/data/test-00000-of-00001.parquet", m500)
  (tmp_path / "hub_math/h4").mkdir()
  shutil.copy(tmp_path / "ref/math500/test.jsonl", tmp_path / "hub_math/h4/test.jsonl")
  parquet(tmp_path / "hub_math/odd/train-00000-of-00001.parquet",  # a level-"?" record
          [r for r in k12 if r["level"] == "?"])
  _prepare("math", tmp_path / "out", tmp_path / "hub_math")
  for folder in ("math", "math500"):
    assert _sums(tmp_path / "out" / folder) == _sums(tmp_path / "ref" / folder)


def test_hub_path_reads_the_cache_offline(tmp_path):
  """Without --from: the Hub snapshot in HF_HOME's cache, with HF_HUB_OFFLINE=1."""
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = tmp_path / "hf/hub/datasets--openai--gsm8k"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs/main").write_text(commit)
  data = FIXTURES / "gsm8k/grade_school_math/data"
  for split in ("train", "test"):
    path = repo / "snapshots" / commit / "main" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(common.read_records(data / f"{split}.jsonl")), path)
  r = _run(["-m", "score_jax.data", "prepare", "gsm8k", "--out", str(tmp_path / "out")],
           env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
  assert r.returncode == 0, r.stderr
  assert f"openai/gsm8k revision {commit}" in r.stdout
  for split in ("train", "test"):
    assert (tmp_path / f"out/gsm8k/{split}.jsonl").read_bytes() == (
        data / f"{split}.jsonl").read_bytes()
  assert f"revision {commit}" in (tmp_path / "out/gsm8k/SOURCE.txt").read_text()


# ---- errors: one line naming the file and the fix

def test_hub_offline_without_cache_is_one_line(tmp_path):
  r = _run(["-m", "score_jax.data", "prepare", "mbpp", "--out", str(tmp_path / "out")],
           env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf")})
  assert r.returncode == 1
  err = r.stderr.strip().splitlines()
  assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
  for part in ("google-research-datasets/mbpp", "Hugging Face Hub", "HF_HUB_OFFLINE",
               "--from LOCAL_PATH"):
    assert part in err[0]
  assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_output_without_force(tmp_path):
  _prepare("gsm8k", tmp_path, FIXTURES / "gsm8k")
  (tmp_path / "gsm8k/train.jsonl").write_text("edited\n")
  with pytest.raises(common.DataError, match=r"gsm8k is not empty; pass --force"):
    _prepare("gsm8k", tmp_path, FIXTURES / "gsm8k")
  assert (tmp_path / "gsm8k/train.jsonl").read_text() == "edited\n"
  _prepare("gsm8k", tmp_path, FIXTURES / "gsm8k", force=True)
  _check_sums(tmp_path / "gsm8k")


def test_errors_name_the_file_and_the_fix(tmp_path):
  with pytest.raises(common.DataError, match=r"--from /no/such: no such file or folder"):
    _prepare("mbpp", tmp_path / "o", "/no/such")
  with pytest.raises(common.DataError, match=r"no mbpp.jsonl .* pass --from"):
    _prepare("mbpp", tmp_path / "o", FIXTURES / "gsm8k")
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
  (bad / "test.jsonl").write_text('{"question": "q"}\n')
  with pytest.raises(common.DataError, match=r"bad/train.jsonl:2: malformed JSON"):
    _prepare("gsm8k", tmp_path / "o", bad)
  (bad / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
  with pytest.raises(common.DataError, match=r"bad/test.jsonl record 0: missing field 'answer'"):
    _prepare("gsm8k", tmp_path / "o", bad)
  lines = (FIXTURES / "mbpp/mbpp/mbpp.jsonl").read_text().splitlines()
  (bad / "mbpp.jsonl").write_text("\n".join(l for l in lines if '"task_id": 2,' not in l))
  with pytest.raises(common.DataError, match=r"lacks the few-shot exemplars"):
    _prepare("mbpp", tmp_path / "o", bad / "mbpp.jsonl")
  assert not (tmp_path / "o").exists()  # nothing written on any error


def test_cli_prints_counts_and_errors(tmp_path):
  r = _run(["-m", "score_jax.data", "prepare", "mbpp", "--out", str(tmp_path),
            "--from", str(FIXTURES / "mbpp")])
  assert r.returncode == 0, r.stderr
  assert "train (task_id 601-974): 1 -> task 'mbpp' split 'train'" in r.stdout
  r = _run(["-m", "score_jax.data", "prepare", "mbpp", "--out", str(tmp_path),
            "--from", str(FIXTURES / "mbpp")])
  assert r.returncode == 1 and r.stderr.startswith("error: ") and "--force" in r.stderr


# ---- the real upstream copies: byte-identical

@pytest.mark.parametrize("name", ["math", "math500", "gsm8k", "mbpp", "humaneval"])
def test_real_upstream_files_reproduce_shared_data(name, shared_data, tmp_path):
  folders, log = _prepare(name, tmp_path, shared_data / name)
  assert "WARNING" not in log, log
  for folder in folders:
    reference = _sums(shared_data / folder.name)
    produced = _sums(tmp_path / folder.name)
    assert produced, folder.name
    for file, digest in produced.items():
      assert reference[file] == digest, f"{folder.name}/{file}"


def test_math500_ids_are_prm800ks(shared_data):
  records = common.read_records(shared_data / "math500/test.jsonl")
  assert hendrycks_math.MATH500_IDS == [r["unique_id"] for r in records]


# ---- the start-up check

def test_check_task_data(tmp_path):
  with pytest.raises(layout.DataMissing, match=(
      r"data_dir=/nonexistent does not exist; get the data with `python -m score_jax.data "
      r"prepare math --out /nonexistent`")):
    layout.check_task_data("math", "/nonexistent", ["train", "test"])
  (tmp_path / "math500").mkdir()
  (tmp_path / "math500/test.jsonl").write_text("{}\n")
  layout.check_task_data("math", tmp_path, ["test"])
  with pytest.raises(layout.DataMissing, match=r"prm800k_style_train12k.reconstructed.jsonl"):
    layout.check_task_data("math", tmp_path, ["train", "test"])
  layout.check_task_data("toy", "/nonexistent", ["train"])       # no data files
  layout.check_task_data("math", tmp_path, ["no_such_split"])     # the task names it later
  (tmp_path / "mbpp.jsonl").write_text("{}\n")                    # code tasks: root or file
  layout.check_task_data("mbpp", tmp_path, ["train"])
  layout.check_task_data("mbpp", tmp_path / "mbpp.jsonl", ["train"])


@pytest.mark.parametrize("config,task", [("gemma2_2b_math", "math"), ("gemma_2b_mbpp", "mbpp"),
                                         ("qwen2p5_1p5b_math", "math")])
def test_real_config_fails_fast_before_weights(config, task, tmp_path):
  """A missing data_dir stops the run before the (nonexistent) checkpoint is opened."""
  start = time.monotonic()
  r = _run(["-m", "score_jax.main", "--config", f"configs/{config}.py", "--workdir",
            str(tmp_path / "w"), "--config.task.data_dir=/nonexistent",
            "--config.init.checkpoint=/nonexistent/model"])
  assert r.returncode == 1
  err = r.stderr.strip().splitlines()
  assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
  assert f"`python -m score_jax.data prepare {task} --out /nonexistent`" in err[0]
  assert "/nonexistent/model" not in r.stderr
  assert time.monotonic() - start < 60


def test_real_config_names_the_missing_file(tmp_path):
  (tmp_path / "data/math500").mkdir(parents=True)
  (tmp_path / "data/math500/test.jsonl").write_text("{}\n")
  r = _run(["-m", "score_jax.main", "--config", "configs/gemma2_2b_math.py", "--workdir",
            str(tmp_path / "w"), f"--config.task.data_dir={tmp_path / 'data'}",
            "--config.init.checkpoint=/nonexistent/model"])
  assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert f"{tmp_path / 'data' / layout.MATH_12K}" in r.stderr
  assert f"prepare math --out {tmp_path / 'data'}`" in r.stderr
