"""The check demo: a miniature where the second attempt has to read and check the first.

  python -m score_jax.main --config configs/demo_check.py --workdir runs/demo_check

Same pipeline, model and training budget as configs/demo.py (base model by supervised
warm-up, then SCoRe: Stage I, Stage II; greedy two-attempt eval on 500 held-out problems),
on the suffix-parity task (score_jax.tasks.parity): `xor: <16 bits>` -> the parity of every
suffix, the empty one last (17 bits), then `=` and a check digit (first bit XOR last bit).
The first answer bit is the parity of all 16 bits, which the ~0.3M-parameter model cannot
learn (nor can the noisy solver it imitates: it guesses that bit); the rest follows locally,
and the check digit at the end of any consistent attempt, right or wrong, is the right first
bit. So the base model's first attempt is wrong on about half the problems, in a way that
cannot be predicted from the prompt, and only a second attempt that reads the first can do
better.

What it shows, as measured (README, "Counterfactual first attempts"): in seed 0, SCoRe's
second attempt learns to read the first attempt's check digit (given a gold or a corrupted
gold first attempt it is right 97-98% of the time, the base model 49%), but the model never
learns to write a right check digit in its own first attempt (it writes 0), so on its own
attempts turn 2 gains nothing (Δ about 0). In seed 1 the RL run broke down after step 50
(turn-2 accuracy 7% at step 150) and the step chosen by validation (50) does not read y1; in
seed 2 turn 2 does not read y1 at any saved step (gold and corrupted gold both 49-50%). So
this is a partial result in one seed of three, not yet a working demo.

Does turn 2 read y1? The counterfactual table (y1 replaced by gold, corrupted gold = the
chain from the wrong first bit, another problem's y1, y1 with its check digit flipped), for
SCoRe and for the base model:

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
  # With blind_spot_rate=0.1 the base model itself learns to read the check digit (its
  # second attempt copies it: the solver's second attempts agree with its check digit), so
  # there is nothing left for SCoRe to teach; at 1/2 they do not.
  c.task.update(name="parity", min_len=16, max_len=16, error_rate=0.1, blind_spot_rate=0.5)
  # "xor: " + 16 bits = 21 characters; answers are 17 bits + "=" + 1 digit + end of turn.
  c.rollout.update(max_prompt_len=24, max_turn1_tokens=21, max_turn2_tokens=21)
  c.eval.update(max_turn1_tokens=21, max_turn2_tokens=21)
  # Our choice for this task: RL at lr 1e-3 (the sorting demo: 3e-4).
  c.optim.update(lr=1e-3)
  return c
