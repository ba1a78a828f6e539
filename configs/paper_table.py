"""The paper's comparison (its Table 2 and ablations) in miniature, on the sorting task.

  python -m score_jax.main --config configs/paper_table.py --workdir runs/paper_table

For each of 3 seeds: one base model, then STaR (D+), Pair-SFT, single-turn RL, multi-turn RL
without Stage I, SCoRe without reward shaping and SCoRe, each trained from that base model,
all evaluated with greedy two-turn decoding on the same 500 held-out problems. The table
gives mean ± standard error over seeds; results.json also keeps every seed's numbers.
"""

from configs import demo


def get_config():
  c = demo.get_config()
  c.experiment.update(
      methods="base,star,pair_sft,single_turn_rl,no_stage1,no_shaping,score",
      seeds="0,1,2")
  return c
