"""Record sources: local jsonl / jsonl.gz / json files, and a real TFDS dataset on disk."""

import gzip
import json
import subprocess
import sys
import textwrap

import pytest

from score_jax.tasks import sources
from score_jax.tasks.gsm8k import GSM8KTask
from score_jax.tasks.math.task import MathTask

RECORDS = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4", "level": 1}]


def test_jsonl(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n", encoding="utf-8")
  assert sources.read_records(path, ["problem", "answer"]) == RECORDS


def test_jsonl_gz_and_line_numbers(tmp_path):
  path = tmp_path / "a.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write(json.dumps(RECORDS[0]) + "\n\n" + json.dumps(RECORDS[1]) + "\n")
  assert sources.read_numbered_records(path) == [(1, RECORDS[0]), (3, RECORDS[1])]


def test_json_list_with_line_numbers(tmp_path):
  path = tmp_path / "a.json"
  path.write_text(json.dumps(RECORDS, indent=1), encoding="utf-8")
  assert sources.read_numbered_records(path) == [(2, RECORDS[0]), (6, RECORDS[1])]
  with pytest.raises(ValueError, match=r"a\.json:2 \(record 0\): missing field 'level'"):
    sources.read_records(path, ["problem", "level"])


def test_real_files(shared_data):
  assert len(sources.read_records(shared_data / "humaneval" / "HumanEval.jsonl.gz",
                                  ["task_id", "prompt"])) == 164
  assert len(sources.read_records(shared_data / "mbpp" / "sanitized-mbpp.json",
                                  ["task_id", "test_list"])) == 427


def test_malformed_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", answer: 2}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:2: malformed JSON \(Expecting property "
                                       r"name enclosed in double quotes at column 18\)"):
    sources.read_records(path)


def test_not_an_object(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"problem": "a"}\n[1, 2]\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected a JSON object, got list"):
    sources.read_records(path)


def test_missing_field(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b"}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:2: missing field 'answer' "
                                       r"\(the record has \['problem'\]\)"):
    sources.read_records(path, ["problem", "answer"])


@pytest.mark.parametrize("name,content", [("e.jsonl", ""), ("e.jsonl", "\n \n"),
                                          ("e.json", "[]")])
def test_empty_file(tmp_path, name, content):
  (tmp_path / name).write_text(content)
  with pytest.raises(ValueError, match="no records"):
    sources.read_records(tmp_path / name)


def test_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such file"):
    sources.read_records(tmp_path / "missing.jsonl")
  (tmp_path / "a.csv").write_text("x")
  with pytest.raises(ValueError, match="unknown format"):
    sources.read_records(tmp_path / "a.csv")
  (tmp_path / "b.jsonl.gz").write_bytes(b"not gzip")
  with pytest.raises(ValueError, match="cannot read it as gzip JSON Lines"):
    sources.read_records(tmp_path / "b.jsonl.gz")
  (tmp_path / "c.json").write_text('{"a": 1}')
  with pytest.raises(ValueError, match="expected a JSON list of records, got dict"):
    sources.read_records(tmp_path / "c.json")
  (tmp_path / "d.jsonl").write_bytes(b'{"a": "\xff"}\n')
  with pytest.raises(ValueError, match=r"d\.jsonl:1: not UTF-8"):
    sources.read_records(tmp_path / "d.jsonl")


# ------------------------------------------------------------------- TFDS

# Builds a tiny dataset in the array_record format with TFDS's own builder API, in another
# process: the test process then reads it from disk only, as it would a prepared dataset.
_BUILD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow_datasets as tfds

    class TinyWordProblems(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "target": tfds.features.Text(),
            "meta": {"level": np.int64, "tags": tfds.features.Sequence(tfds.features.Text())},
        }))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(3), "test": self._generate_examples(2)}

      def _generate_examples(self, n):
        for i in range(n):
          yield i, {"text": f"What is {i} + {i}?", "target": f"{i} + {i} = {2 * i}\\n#### {2 * i}",
                    "meta": {"level": i + 1, "tags": ["add", f"t{i}"]}}

    TinyWordProblems(data_dir=sys.argv[1], file_format="array_record").download_and_prepare()
""")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")
  data_dir = tmp_path_factory.mktemp("tfds")
  subprocess.run([sys.executable, "-c", _BUILD, str(data_dir)], check=True,
                 capture_output=True, timeout=300)
  assert (data_dir / "tiny_word_problems" / "1.0.0").is_dir()
  return data_dir


def test_tfds_source_reads_and_maps_fields(tfds_dir):
  source = sources.TFDSSource("tiny_word_problems", "train",
                              {"question": "text", "answer": "target", "level": "meta/level",
                               "tags": "meta/tags"}, data_dir=tfds_dir)
  records = sorted(source.read(["question", "answer"]), key=lambda r: r["level"])
  assert records == [
      {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}",
       "level": i + 1, "tags": ["add", f"t{i}"]} for i in range(3)]
  assert all(type(r["level"]) is int for r in records)


def test_tfds_source_feeds_a_task(tfds_dir, shared_data):
  source = sources.TFDSSource("tiny_word_problems", "test",
                              {"question": "text", "answer": "target"}, data_dir=tfds_dir)
  task = GSM8KTask(shared_data, source=source)
  try:
    problems = sorted(task.load("test"), key=lambda p: p.answer)
    assert [p.answer for p in problems] == ["0", "2"]
    assert "Problem:\nWhat is 1 + 1?" in problems[1].prompt
    assert task.rewards(problems, ["#### 0", "The final answer is $3$. I hope it is correct."]
                        ) == [1.0, 0.0]
    assert len(task.load("train")) == 6_973          # other splits still come from the files
  finally:
    task.close()


def test_tfds_source_errors(tfds_dir, shared_data):
  bad_field = sources.TFDSSource("tiny_word_problems", "test", {"problem": "question"},
                                 data_dir=tfds_dir)
  with pytest.raises(ValueError, match=r"no feature 'question' for task field 'problem' "
                                       r"\(features: \['meta', 'target', 'text'\]\)"):
    bad_field.read()
  with pytest.raises(ValueError, match="no feature 'problem'"):
    MathTask(shared_data, source={"test": sources.TFDSSource(
        "tiny_word_problems", "test", {}, data_dir=tfds_dir)}).load("test")
  with pytest.raises(ValueError, match=r"Unknown split 'validation'.*array_record"):
    sources.TFDSSource("tiny_word_problems", "validation", data_dir=tfds_dir).read()
  with pytest.raises(ValueError, match="cannot open it with tfds.data_source"):
    sources.TFDSSource("no_such_dataset_xyz", "test", data_dir=tfds_dir).read()
