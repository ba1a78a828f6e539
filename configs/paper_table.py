"""The paper's comparison (its Table 2 and ablations) in miniature, on the sorting task.

  python -m score_jax.main --config configs/paper_table.py --workdir runs/paper_table

For each of 3 seeds: one base model, then
  - untrained: the base model with the task's turn-2 instruction ("Base model"), and with
    Self-Refine's critique-then-revise instruction (score_jax.tasks.prompts);
  - supervised baselines: STaR (D+), Pair-SFT (wrong first attempts of the base model paired
    with its own correct samples of the same problem);
  - RL: single-turn RL, multi-turn RL without Stage I, SCoRe without reward shaping, SCoRe
    with STaR instead of REINFORCE in Stage II, and SCoRe,
each trained from that base model, all evaluated with greedy two-turn decoding on the same 500
held-out problems. The table gives mean ± standard error over seeds; results.json also keeps
every seed's numbers.

Reading the Self-Refine row: the character-level base model has only ever seen the task's
own turn-2 instruction ("Check and fix."), not instructions in general, so this row shows
what an unseen critique-then-revise prompt does to it (in a short run it sorted the
letters of the prompt); Self-Refine as the paper means it needs an instruction-following
model (the MATH / MBPP configs).

A quick end-to-end check (one seed, a few steps, 50 problems; minutes, not a result):

  python -m score_jax.main --config configs/paper_table.py --workdir /tmp/pt \\
      --config.experiment.seeds=0 --config.experiment.base_steps=20 \\
      --config.experiment.rl_steps=8 --config.experiment.sft_baseline_steps=8 \\
      --config.task.eval_limit=50
"""

from configs import demo


def get_config():
  c = demo.get_config()
  c.experiment.update(
      methods=("base,self_refine,star,pair_sft,single_turn_rl,no_stage1,no_shaping,"
               "star_stage2,score"),
      seeds="0,1,2")
  return c
