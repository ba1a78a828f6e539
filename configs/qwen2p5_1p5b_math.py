"""SCoRe on MATH with Qwen2.5 1.5B Instruct: the MATH recipe of configs/gemma2_2b_math.py.

Train (every worker runs it; the checkpoint directory must exist on each worker, e.g.
`huggingface-cli download Qwen/Qwen2.5-1.5B-Instruct --local-dir
$HOME/models/Qwen2.5-1.5B-Instruct` on all of them):

  python -m score_jax.main --config configs/qwen2p5_1p5b_math.py \
      --workdir gs://BUCKET/runs/qwen2p5-1p5b-math \
      --config.init.checkpoint=$HOME/models/Qwen2.5-1.5B-Instruct --config.distributed=True

Evaluate (separate process; greedy two-turn on MATH500, W/eval/metrics.jsonl):

  python -m score_jax.evaluate --config configs/qwen2p5_1p5b_math.py \
      --workdir gs://BUCKET/runs/qwen2p5-1p5b-math \
      --config.init.checkpoint=$HOME/models/Qwen2.5-1.5B-Instruct --config.distributed=False

`config.init.checkpoint` is required. The tokenizer comes from the checkpoint; prompts use
Qwen2.5's ChatML template with its default system turn ("You are Qwen, created by Alibaba
Cloud. ..."). Qwen2.5-1.5B's embedding has 151,936 rows for a 151,665-id tokenizer: the
sampler must never draw the padding ids.

Everything else is the paper's MATH setting as in configs/gemma2_2b_math.py (Adam, lr 5e-6,
1000 Stage I + 2000 Stage II steps, temperature 1.0, alpha 10, beta1 0.01, beta2 0.1,
32 problems x 4 samples = 128 episodes per step instead of the paper's 512, prompt 512 /
attempts 1024 tokens, bf16 compute with fp32 params, checkpoints every 100 steps). The
1.5B model (28 layers, 2 KV heads of 128) needs about half the memory of Gemma 2 2B per
row: a v5p-8 holds it with room to spare (or try --config.train.batch_size=64).
"""

from configs import gemma2_2b_math


def get_config():
  c = gemma2_2b_math.get_config()
  c.init.checkpoint = ""             # REQUIRED: HF directory of Qwen/Qwen2.5-1.5B-Instruct
  c.chat_format = "qwen2.5"
  c.model.update(family="qwen2")
  return c
