"""`score_jax.load("org/name")`: Hub ids from the local Hugging Face cache, offline; and the
one-line errors of every `load()` misuse.

The cache fixture is the layout huggingface_hub writes (models--org--name/refs/main
holding the revision, snapshots/<revision>/<files>), in tmp_path, holding a tiny Qwen2.5
checkpoint (tests/hf_tiny.py). HF_HUB_CACHE points at it and HF_HUB_OFFLINE=1 keeps the
network out of every test.
"""

import pathlib

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")

import score_jax  # noqa: E402
from score_jax.hub import resolve  # noqa: E402
from tests import hf_tiny  # noqa: E402

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return hf_tiny.make_checkpoint(tmp_path_factory.mktemp("tiny") / "model", "qwen2.5")


@pytest.fixture
def hf_cache(tmp_path, tiny_dir, monkeypatch):
  """A Hub cache holding someone/tiny-qwen at REVISION; offline."""
  cache = tmp_path / "hub"
  repo = cache / "models--someone--tiny-qwen"
  snapshot = repo / "snapshots" / REVISION
  snapshot.mkdir(parents=True)
  for f in tiny_dir.iterdir():
    (snapshot / f.name).write_bytes(f.read_bytes())
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(REVISION)
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.chdir(tmp_path)          # "someone/tiny-qwen" is no local path here
  return cache


@pytest.mark.parametrize("text,is_id", [
    ("google/gemma-3-270m-it", True), ("Qwen/Qwen2.5-0.5B", True), ("a/b", True),
    ("./foo/bar", False), ("/abs/path", False), ("~/x", False), ("org/model.gguf", False),
    ("a/b/c", False), ("name", False), ("org/na me", False), ("org--x/y", False),
    ("org/x..y", False), ("-org/x", False), ("org/", False), (".hidden/x", False)])
def test_what_is_a_hub_id(text, is_id):
  assert resolve.is_hub_id(text) is is_id


def test_a_cached_hub_id_loads_offline_with_the_directorys_logits(hf_cache, tiny_dir):
  lm = score_jax.load("someone/tiny-qwen")
  assert lm.source == "someone/tiny-qwen"
  assert lm.config.family == "qwen2" and lm.chat.name == "qwen2.5"
  assert lm.has_chat_template is True
  ref = score_jax.load(tiny_dir)
  ids = np.array([lm.tokenizer.encode("There might be an error in the solution above.")])
  assert ids.shape[1] > 3
  np.testing.assert_array_equal(np.asarray(lm.logits(ids)), np.asarray(ref.logits(ids)))
  assert lm.tokenizer.path.startswith(str(hf_cache / "models--someone--tiny-qwen"))


def test_an_uncached_hub_id_offline_is_one_clear_error(hf_cache):
  with pytest.raises(FileNotFoundError) as e:
    score_jax.load("someone/not-downloaded")
  message = str(e.value)
  assert message == (
      f"someone/not-downloaded is not a local path and is not in the Hugging Face cache "
      f"({hf_cache}); download it with hf download someone/not-downloaded (older "
      f"huggingface_hub: huggingface-cli download someone/not-downloaded) or pass a local "
      f"directory")


def test_a_local_directory_wins_over_a_hub_id(hf_cache, tiny_dir, tmp_path):
  local = tmp_path / "someone" / "not-downloaded"
  local.parent.mkdir()
  local.symlink_to(tiny_dir, target_is_directory=True)
  assert score_jax.load("someone/not-downloaded").source == "someone/not-downloaded"


def test_without_huggingface_hub_a_hub_id_names_the_install(hf_cache, monkeypatch):
  import sys  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)
  with pytest.raises(ImportError, match=r"^someone/tiny-qwen is not a local path; loading it "
                     r"from the Hugging Face Hub needs huggingface_hub \(pip install "):
    score_jax.load("someone/tiny-qwen")


def _one_line(exc_type, path, match):
  with pytest.raises(exc_type) as e:
    score_jax.load(path)
  message = str(e.value)
  assert "\n" not in message and match in message, message
  return message


def test_every_load_misuse_is_one_line_naming_the_path_and_the_fix(hf_cache, tmp_path,
                                                                   tiny_dir):
  fix = "pass a Hugging Face model directory (config.json + *.safetensors), a .gguf file"
  for missing in ("./foo/bar", str(tmp_path / "abs" / "path"), "~/no-such-model-dir",
                  "model.gguf", "org/model.gguf", "a/b/c"):
    message = _one_line(FileNotFoundError, missing, "does not exist; " + fix)
    assert str(pathlib.Path(missing).expanduser().absolute()) in message
  # A file that is not a .gguf: name the directory that holds it.
  message = _one_line(ValueError, tiny_dir / "config.json",
                      f"is a file, not a checkpoint; pass the directory that holds it "
                      f"({tiny_dir})")
  assert message.startswith(str(tiny_dir / "config.json"))
  # A directory that holds no model.
  (tmp_path / "empty").mkdir()
  _one_line(FileNotFoundError, tmp_path / "empty",
            f"{tmp_path / 'empty'} has no config.json, no .gguf file and no Orbax checkpoint; "
            + fix)
  # A pathlib.Path is always a local path, never a Hub id.
  _one_line(FileNotFoundError, pathlib.Path("someone/tiny-qwen2"), "does not exist")
