"""Seconds-long CPU smoke run: a tiny model, the toy task, every stage for a few steps.

  python -m score_jax.main --config configs/tiny.py --workdir runs/tiny
  python -m score_jax.evaluate --config configs/tiny.py --workdir runs/tiny --once
"""

from configs import base as base_config


def get_config():
  c = base_config.get_config()
  c.model.update(num_layers=2, embed_dim=32, hidden_dim=64, num_heads=4, num_kv_heads=2,
                 head_dim=8)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.plan.update(stages="sft,stage1,stage2", sft_steps=4, stage1_steps=2, stage2_steps=2)
  c.train.update(batch_size=4, sft_batch_size=16)
  c.rollout.update(max_prompt_len=24, max_turn1_tokens=8, max_turn2_tokens=8,
                   max_instruction_len=32, samples_per_prompt=2)
  c.eval.update(batch_size=16, max_turn1_tokens=8, max_turn2_tokens=8, poll_s=1.0,
                timeout_s=30.0)
  c.task.update(eval_limit=32)
  c.checkpoint.update(every=2, keep=2)
  return c
