"""The check demo: a miniature where the second attempt has to read and check the first.

  python -m score_jax.main --config configs/demo_check.py --workdir runs/demo_check

Same pipeline and model as configs/demo.py (base model by supervised warm-up, then SCoRe:
Stage I, Stage II; greedy two-attempt eval on 500 held-out problems), on the parity task
(score_jax.tasks.parity): `xor: <16 bits>` -> the parity of the 16 bits, then `=` and the
work, the parity of every prefix (17 bits, the empty prefix first), e.g. `xor: 1000` ->
`1=01111`. The first bit is the parity of all 16 bits, which the ~0.3M-parameter model cannot
learn (nor can the noisy solver it imitates: it guesses that bit); the work is local, does not
depend on the guess, and ends in the parity. So the base model's first attempt is wrong on
about half the problems, in a way that cannot be predicted from the prompt, and the last bit
of any attempt whose work is right is the right first bit: only a second attempt that reads
the first can do better than a guess.

What it shows, as measured (README, "Counterfactual first attempts"; 2026-11-28, 2 shared
CPU cores, 16-20 min wall a seed): a seed either learns to read or does not. In seeds 1 and 2
Stage I's turn 2 learns to start from the first attempt's last bit (seed 2 by step 50, seed
1 from about step 110): SCoRe Acc@t1 50.2, Acc@t2 100.0 (Δ +49.8: every wrong first attempt
fixed, no right one broken), and given gold or corrupted gold first attempts it is right 100%
of the time (the base model 50%). In seed 0 turn 2 never learns to read (validation Acc@t2
49.6-49.8% at every Stage I step, also with 450 Stage I steps; test Δ +0.8 ± 1.3). Over the
three seeds SCoRe's Acc@t2 is 83.7 ± 16.3 (mean ± standard error over seeds). At RL lr 1e-3
Stage II can break the model (validation Acc@t2 at step 300: seed 0 0.6%, seed 2 49.6% from
100%); the best validated step is the one kept (seeds 1, 2: steps 300, 250).

Does turn 2 read y1? The counterfactual table (y1 replaced by gold, corrupted gold = the
right answer with the wrong first bit, another problem's y1, y1 with its last bit flipped),
for SCoRe and for the base model:

  python -m score_jax.counterfactual --config configs/demo_check.py \\
      --workdir runs/demo_check/seed_0/score --checkpoint best --out runs/demo_check/cf_score
  python -m score_jax.counterfactual --config configs/demo_check.py \\
      --workdir runs/demo_check/seed_0/base --checkpoint latest --out runs/demo_check/cf_base

Other seeds: --config.seed=S (the experiment's run directories are then W/seed_S/...).
"""

from configs import demo


def get_config():
  c = demo.get_config()
  # 16 random bits; the solver guesses the parity bit (blind_spot_rate: for this task, the
  # rate of a wrong first bit) and makes a typo (one character flipped) 10% of the time.
  c.task.update(name="parity", min_len=16, max_len=16, error_rate=0.1, blind_spot_rate=0.5)
  # "xor: " + 16 bits = 21 characters; answers are 1 bit + "=" + 17 bits + end of turn.
  c.rollout.update(max_prompt_len=24, max_turn1_tokens=21, max_turn2_tokens=21)
  # One batch of 500 greedy two-turn decodes per validation (the sorting demo: 5 of 100):
  # fewer sequential decode steps on CPU.
  c.eval.update(max_turn1_tokens=21, max_turn2_tokens=21, batch_size=500)
  # RL at lr 1e-3 (the sorting demo: 3e-4); 800 warm-up steps for the base model; Stage I
  # gets 225 of 300 RL steps.
  c.optim.update(lr=1e-3)
  c.experiment.update(base_steps=800, rl_steps=300)
  return c
