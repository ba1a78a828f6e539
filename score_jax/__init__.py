"""score_jax: SCoRe (Kumar et al., arXiv 2409.12917) in JAX / Flax NNX.

Public API (imported lazily so that `import score_jax` stays cheap):
  score_jax.load(path_or_hub_id, *, dtype=..., mesh=None) -> LM
      an HF directory, a .gguf file, a Gemma Orbax directory or a Hub id "org/name"
  score_jax.export_hf(lm, out_dir)
A trained run's checkpoint as a Hugging Face model: python -m score_jax.export.
"""

__version__ = "0.1.0"


def __getattr__(name):
  if name in ("load", "export_hf", "LM"):
    from score_jax.hub import lm as lm_lib  # pylint: disable=import-outside-toplevel
    return getattr(lm_lib, name)
  raise AttributeError(f"module 'score_jax' has no attribute {name!r}")
