"""SCoRe on MATH with Meta-Llama-3-8B-Instruct: the MATH recipe of configs/gemma2_2b_math.py.

Train (every worker runs it; the checkpoint directory must exist on each worker, e.g.
`huggingface-cli download meta-llama/Meta-Llama-3-8B-Instruct --local-dir
$HOME/models/Meta-Llama-3-8B-Instruct --exclude "original/*"` on all of them):

  python -m score_jax.main --config configs/llama3_8b_math.py \
      --workdir gs://BUCKET/runs/llama3-8b-math \
      --config.init.checkpoint=$HOME/models/Meta-Llama-3-8B-Instruct --config.distributed=True

Evaluate (separate process, e.g. on a v5p-8; greedy two-turn on MATH500):

  python -m score_jax.evaluate --config configs/llama3_8b_math.py \
      --workdir gs://BUCKET/runs/llama3-8b-math \
      --config.init.checkpoint=$HOME/models/Meta-Llama-3-8B-Instruct --config.distributed=False

`config.init.checkpoint` is required. Use Meta-Llama-3-8B-Instruct (not 3.1): the "llama3"
chat format is its template; Llama 3.1's template adds a dated system turn we do not write.
Generation stops at <|eot_id|> (the tokenizer's EOS in the current tokenizer_config.json).

The paper's MATH setting as in configs/gemma2_2b_math.py (Adam, lr 5e-6, 1000 Stage I +
2000 Stage II steps, temperature 1.0, alpha 10, beta1 0.01, beta2 0.1, 32 problems x 4
samples = 128 episodes per step, prompt 512 / attempts 1024 tokens), sized for a v5p-16
(8 chips): fp32 params, Adam moments, gradients and the base/reference copies of 8B
parameters take ~190 GB, the bf16 KV cache of 128 rows ~45 GB, and each micro-batch of 8
rows (one per chip) ~4 GB of logits per chip.
"""

from configs import gemma2_2b_math


def get_config():
  c = gemma2_2b_math.get_config()
  c.init.checkpoint = ""             # REQUIRED: HF directory of Meta-Llama-3-8B-Instruct
  c.chat_format = "llama3"
  c.model.update(family="llama")
  return c
