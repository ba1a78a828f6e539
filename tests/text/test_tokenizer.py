"""Tests of score_jax.text.tokenizer on real tokenizers trained on the fly (no downloads)."""

import json

import numpy as np
import pytest

from score_jax.text import tokenizer as tk

ROUND_TRIP_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé: 数学, ΔΣ, ✓ and 🙂 (emoji via bytes)",
    "  leading, double  spaces,\ttabs\nand\n\nnewlines  ",
    "$x^2 + 2x = \\boxed{5}$",
    "",
]

CORPUS = "\n".join(
    ["The quick brown fox jumps over the lazy dog. Ünïcödé 数学 $x^2$ \\boxed{5}"] * 30
    + [f"hello world, problem number {i} has answer {i * 7}" for i in range(150)])


# ----------------------------------------------------------------------------- fixtures

def _train_sentencepiece(tmp_path, model_type):
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(CORPUS, encoding="utf-8")
  prefix = tmp_path / f"sp_{model_type}"
  # Gemma's layout: pad=0, eos=1, bos=2, unk=3, then the chat markers; byte fallback,
  # no normalisation, no dummy prefix, whitespace kept.
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(prefix), vocab_size=400, model_type=model_type,
      user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
      bos_piece="<bos>", unk_piece="<unk>", byte_fallback=True, add_dummy_prefix=False,
      remove_extra_whitespaces=False, normalization_rule_name="identity",
      character_coverage=1.0, minloglevel=2)
  return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
  return _train_sentencepiece(tmp_path_factory.mktemp("sp"), "bpe")


def _train_bpe(specials, vocab_size=350):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
  return tok


HF_SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|eot|>"]  # ids 0..3


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("hf")
  _train_bpe(HF_SPECIALS).save(str(d / "tokenizer.json"))
  # bos as a plain string, eos in the AddedToken dict form, pad as a string.
  (d / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": "<|bos|>",
      "eos_token": {"content": "<|eos|>", "lstrip": False, "rstrip": False},
      "pad_token": "<|pad|>", "chat_template": "unused"}))
  return d


# ----------------------------------------------------------------------------- CharTokenizer

def test_char_tokenizer_ids_by_hand():
  tok = tk.CharTokenizer("ab+")
  # specials first: <pad>=0 <bos>=1 <eos>=2 <eot>=3, then a=4 b=5 +=6
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 7)
  assert tok.encode("ab+<eot>ba") == [4, 5, 6, 3, 5, 4]
  assert tok.encode("ab", add_bos=True) == [1, 4, 5]
  assert tok.token_id("<eot>") == 3 and tok.token_id("b") == 5
  assert tok.token_id("<nope>") is None and tok.token_id("ab") is None
  assert tok.decode([1, 4, 0, 0, 5, 3, 2]) == "<bos>ab<eot><eos>"
  assert tok.decode([1, 4, 0, 0, 5, 3, 2], skip_special=True) == "ab"
  assert tok.decode(np.array([4, 5, 0, 0])) == "ab"
  assert tok.encode_batch(["a", "b+"], add_bos=True) == [[1, 4], [1, 5, 6]]
  assert tok.id_to_piece(3) == "<eot>" and tok.id_to_piece(6) == "+"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.id_to_piece(7)


def test_char_tokenizer_special_wins_over_alphabet_chars():
  tok = tk.CharTokenizer("<eot>x")  # '<', 'e', 'o', 't', '>' are also characters
  assert tok.encode("<eot>") == [3]
  assert tok.encode("<e") == [4, 5]
  assert tok.decode(tok.encode("x<to<eot>")) == "x<to<eot>"


def test_char_tokenizer_errors():
  tok = tk.CharTokenizer("ab")
  with pytest.raises(ValueError, match=r"'c' \(U\+0063\) at position 2"):
    tok.encode("abc")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([7])
  with pytest.raises(ValueError, match="repeats"):
    tk.CharTokenizer("aba")
  with pytest.raises(ValueError, match="'<eos>'"):
    tk.CharTokenizer("ab", specials=("<pad>", "<bos>"))
  with pytest.raises(ValueError, match="empty"):
    tk.CharTokenizer("")
  with pytest.raises(TypeError):
    tok.encode(["a"])


def test_char_tokenizer_without_bos():
  tok = tk.CharTokenizer("xy", specials=("<pad>", "<eos>"))
  assert tok.bos_id is None
  assert tok.encode("xy", add_bos=True) == [2, 3]


# ----------------------------------------------------------------------------- SentencePiece

def test_sentencepiece_special_ids(sp_path):
  tok = tk.SentencePieceTokenizer(sp_path)
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
  assert tok.vocab_size == 400
  assert tok.token_id("<start_of_turn>") == 4 and tok.token_id("<end_of_turn>") == 5
  assert tok.token_id("<not a piece>") is None
  assert tok.token_id("<unk>") == 3
  assert tok.id_to_piece(tok.eos_id) == "<eos>" and tok.id_to_piece(5) == "<end_of_turn>"
  # Chat markers and control pieces in the text become their single ids.
  ids = tok.encode("<start_of_turn>user<end_of_turn><eos><bos>")
  assert ids[0] == 4 and ids[-3:] == [5, 1, 2]
  assert tok.decode(ids) == "<start_of_turn>user<end_of_turn><eos><bos>"


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_sentencepiece_round_trip(sp_path, text):
  tok = tk.SentencePieceTokenizer(sp_path)
  ids = tok.encode(text)
  assert all(0 <= i < tok.vocab_size for i in ids)
  assert tok.decode(ids) == text


def test_sentencepiece_unigram_round_trip(tmp_path):
  tok = tk.SentencePieceTokenizer(_train_sentencepiece(tmp_path, "unigram"))
  for text in ROUND_TRIP_TEXTS:
    assert tok.decode(tok.encode(text)) == text


def test_sentencepiece_bos_pad_and_skip_special(sp_path):
  tok = tk.SentencePieceTokenizer(sp_path)
  body = tok.encode("hello world")
  assert tok.encode("hello world", add_bos=True) == [2] + body
  padded = [0, 0, 2] + body + [5, 1, 0]
  assert tok.decode(padded) == "<bos>hello world<end_of_turn><eos>"
  assert tok.decode(padded, skip_special=True) == "hello world"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([400])


def test_sentencepiece_explicit_special_tokens(sp_path):
  tok = tk.SentencePieceTokenizer(sp_path, special_tokens=["<end_of_turn>"])
  ids = tok.encode("<start_of_turn>a<end_of_turn>")
  assert tok.decode(ids, skip_special=True) == "<start_of_turn>a"
  with pytest.raises(ValueError, match="not a piece"):
    tk.SentencePieceTokenizer(sp_path, special_tokens=["<nope>"])


# ----------------------------------------------------------------------------- HF tokenizers

def test_hf_special_ids_from_config(hf_dir):
  tok = tk.HFTokenizer(hf_dir / "tokenizer.json")
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.token_id("<|eot|>") == 3 and tok.token_id("<|nope|>") is None
  assert tok.vocab_size == 350
  assert tok.path == str(hf_dir / "tokenizer.json")
  assert tok.id_to_piece(2) == "<|eos|>"
  ids = tok.encode("hello<|eot|>world")
  assert ids.count(3) == 1 and tok.decode(ids) == "hello<|eot|>world"


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_hf_round_trip(hf_dir, text):
  tok = tk.HFTokenizer(hf_dir)
  assert tok.decode(tok.encode(text)) == text


def test_hf_bos_pad_skip_special_and_batch(hf_dir):
  tok = tk.HFTokenizer(hf_dir)
  body = tok.encode("hello world")
  assert tok.encode("hello world", add_bos=True) == [1] + body
  assert tok.decode([0, 1] + body + [3, 2, 0, 0]) == "<|bos|>hello world<|eot|><|eos|>"
  assert tok.decode([0, 1] + body + [3, 2, 0, 0], skip_special=True) == "hello world"
  texts = ["hello", "", "数学 ✓"]
  assert tok.encode_batch(texts, add_bos=True) == [tok.encode(t, add_bos=True) for t in texts]


def test_hf_config_precedence_and_null_bos(tmp_path):
  _train_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]).save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "special_tokens_map.json").write_text(json.dumps(
      {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
  # Qwen2-style: no BOS; tokenizer_config.json wins over special_tokens_map.json.
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": None, "eos_token": "<|im_end|>"}))
  tok = tk.HFTokenizer(tmp_path)
  assert tok.bos_id is None and tok.eos_id == 2 and tok.pad_id == 0
  assert tok.encode("hi", add_bos=True) == tok.encode("hi")
  assert tk.HFTokenizer(tmp_path, eos_token="<|endoftext|>").eos_id == 0


def test_hf_without_config_uses_known_pieces(tmp_path):
  _train_bpe(["</s>", "<pad>"]).save(str(tmp_path / "tokenizer.json"))
  tok = tk.HFTokenizer(tmp_path / "tokenizer.json")
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, 0, 1)


def test_hf_errors(tmp_path):
  _train_bpe(["<|x|>"]).save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match="end-of-sequence"):
    tk.HFTokenizer(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|missing|>"}))
  with pytest.raises(ValueError, match=r"tokenizer_config.json field eos_token names '<\|missing\|>'"):
    tk.HFTokenizer(tmp_path)
  bad = tmp_path / "bad" / "tokenizer.json"
  bad.parent.mkdir()
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
    tk.HFTokenizer(bad)


def test_hf_wordlevel_ids_by_hand(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  vocab = {"[UNK]": 0, "<pad>": 1, "</s>": 2, "hello": 3, "world": 4, "!": 5}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(["<pad>", "</s>"])
  tok.save(str(tmp_path / "tokenizer.json"))
  ours = tk.HFTokenizer(tmp_path)
  assert (ours.eos_id, ours.pad_id, ours.bos_id, ours.vocab_size) == (2, 1, None, 6)
  assert ours.encode("hello world foo !</s>") == [3, 4, 0, 5, 2]
  assert ours.decode([3, 1, 4, 2], skip_special=True) == "hello world"


# ----------------------------------------------------------------------------- loading

def test_load_tokenizer_dispatch(tmp_path, sp_path, hf_dir):
  assert isinstance(tk.load_tokenizer(hf_dir), tk.HFTokenizer)
  assert isinstance(tk.load_tokenizer(hf_dir / "tokenizer.json"), tk.HFTokenizer)
  assert isinstance(tk.load_tokenizer(sp_path), tk.SentencePieceTokenizer)
  sp_dir = tmp_path / "gemma_flax"
  sp_dir.mkdir()
  (sp_dir / "tokenizer.model").write_bytes(sp_path.read_bytes())
  assert isinstance(tk.load_tokenizer(sp_dir), tk.SentencePieceTokenizer)
  # An HF-format directory with both files: tokenizer.json (and its config) wins.
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (sp_dir / name).write_bytes((hf_dir / name).read_bytes())
  assert isinstance(tk.load_tokenizer(sp_dir), tk.HFTokenizer)


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tk.load_tokenizer(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="neither tokenizer.json"):
    tk.load_tokenizer(tmp_path)
  junk = tmp_path / "tokenizer.model"
  junk.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="not a SentencePiece model"):
    tk.load_tokenizer(junk)


def test_tokenizer_from_config(sp_path, hf_dir):
  import ml_collections  # pylint: disable=import-outside-toplevel
  tok = tk.tokenizer_from_config({"kind": "char", "alphabet": "0123456789+=", "path": ""})
  assert isinstance(tok, tk.CharTokenizer) and tok.encode("1+1") == [5, 14, 5]
  cfg = ml_collections.ConfigDict({"kind": "sentencepiece", "path": str(sp_path), "alphabet": ""})
  assert isinstance(tk.tokenizer_from_config(cfg), tk.SentencePieceTokenizer)
  hf = tk.tokenizer_from_config({"kind": "hf", "path": str(hf_dir), "eos_token": "<|eot|>"})
  assert isinstance(hf, tk.HFTokenizer) and hf.eos_id == 3
  assert isinstance(tk.tokenizer_from_config({"kind": "auto", "path": str(sp_path)}),
                    tk.SentencePieceTokenizer)
  with pytest.raises(ValueError, match="tokenizer.kind='bpe'"):
    tk.tokenizer_from_config({"kind": "bpe"})
  with pytest.raises(ValueError, match=r"unknown tokenizer config fields \['alphabett'\]"):
    tk.tokenizer_from_config({"kind": "char", "alphabett": "ab"})
  with pytest.raises(ValueError, match=r"\['alphabet'\] do not apply"):
    tk.tokenizer_from_config({"kind": "hf", "path": str(hf_dir), "alphabet": "ab"})
  with pytest.raises(ValueError, match="needs tokenizer.path"):
    tk.tokenizer_from_config({"kind": "hf", "path": ""})
  with pytest.raises(ValueError, match="needs tokenizer.alphabet"):
    tk.tokenizer_from_config({"kind": "char"})


def test_check_vocab_fits(hf_dir):
  tok = tk.HFTokenizer(hf_dir)
  tk.check_vocab_fits(tok, 350, "ckpt/config.json")
  tk.check_vocab_fits(tok, 512, "ckpt/config.json")  # padded model vocab is fine
  with pytest.raises(ValueError) as e:
    tk.check_vocab_fits(tok, 349, "ckpt/config.json")
  msg = str(e.value)
  assert str(hf_dir / "tokenizer.json") in msg and "350" in msg and "349" in msg
  assert "ckpt/config.json" in msg
