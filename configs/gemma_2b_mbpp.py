"""SCoRe on MBPP with Gemma 1.1 2B it, evaluated on MBPP test and HumanEval (paper, Table 5).

Train on MBPP "train" (task ids 601-974, the paper's 3-shot prompt) on every worker (the
checkpoint directory must exist on each, e.g. `huggingface-cli download google/gemma-1.1-2b-it
--local-dir $HOME/models/gemma-1.1-2b-it` on all of them):

  python -m score_jax.main --config configs/gemma_2b_mbpp.py \
      --workdir gs://BUCKET/runs/gemma-2b-mbpp \
      --config.init.checkpoint=$HOME/models/gemma-1.1-2b-it --config.distributed=True

Evaluate on MBPP "test" (task ids 11-510; a separate process following the checkpoints,
metrics in W/eval/metrics.jsonl):

  python -m score_jax.evaluate --config configs/gemma_2b_mbpp.py \
      --workdir gs://BUCKET/runs/gemma-2b-mbpp \
      --config.init.checkpoint=$HOME/models/gemma-1.1-2b-it --config.distributed=False

Evaluate the same checkpoints on HumanEval (the paper's code benchmark; zero-shot prompt,
same turn-2 instruction), as another process:

  python -m score_jax.evaluate --config configs/gemma_2b_mbpp.py \
      --workdir gs://BUCKET/runs/gemma-2b-mbpp \
      --config.init.checkpoint=$HOME/models/gemma-1.1-2b-it --config.distributed=False \
      --config.task.name=humaneval --config.task.eval_split=test

`config.init.checkpoint` is required (`required_fields`): a Hugging Face directory with
config.json, model*.safetensors and tokenizer.json (Gemma 1 2B it; the paper used Gemini
1.0 Pro). The tokenizer comes from it; prompts use the Gemma chat template. Programs run in
the bubblewrap sandbox (`apt-get install bubblewrap` on the workers and the eval VM).

Paper hyperparameters (Table 5, MBPP): Adam, lr 1e-5, 1500 steps, batch 128, temperature
1.0, alpha 10, beta1 0.01, beta2 0.25. Our choices:
* Stage split: 500 Stage I steps, then 1000 Stage II steps (1500 in all).
* Batch: 32 problems x 4 samples = 128 episodes per step (the paper's 128), leave-one-out
  baseline, KL k2 in the loss, constant learning rate, clipping at 1.0. Sized for a v5p-8
  (4 chips): fp32 params, Adam, gradients and base/reference copies ~13 GB per chip, the
  bf16 KV cache (multi-query: 128 rows x 2,176 slots) ~1.3 GB per chip, one micro-batch of
  8 rows ~13 GB of logits per chip.
* Lengths: prompt 1024 tokens (the 3-shot prompt, left-truncated beyond), each attempt up
  to 512 tokens, 128 tokens for end-of-turn + the turn-2 instruction.
* bf16 compute, fp32 params, full remat; checkpoint every 50 steps, keep the last 3 and the
  best by greedy acc_t2 on MBPP's validation ids 511-600 (validated every 100 steps).
"""

from configs import gemma2_2b_math


def get_config():
  # The recipe of configs/gemma2_2b_math.py (same batch, baseline, KL, optimiser, remat,
  # mesh); what differs for MBPP follows.
  c = gemma2_2b_math.get_config()
  c.init.checkpoint = ""             # REQUIRED: HF directory of google/gemma-1.1-2b-it
  c.model.update(family="gemma")
  c.task.update(name="mbpp")
  c.rollout.update(max_prompt_len=1024, max_turn1_tokens=512, max_turn2_tokens=512)
  c.rl.update(beta2=0.25)
  c.plan.update(stage1_steps=500, stage2_steps=1000)
  c.optim.update(lr=1e-5)
  c.checkpoint.update(every=50)
  c.eval.update(max_turn1_tokens=512, max_turn2_tokens=512, validation_every=100)
  return c
