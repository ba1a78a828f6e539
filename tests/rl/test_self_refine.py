"""Self-Refine's turn-2 instruction (score_jax.tasks.prompts) and how it reaches the sampler.

- `prompts.self_refine_instruction` keeps each task family's answer format (MATH: the
  paper's "Final Answer: ..." sentence; code: one ```python block; synthetic tasks: the
  answer only) and is written in the sorting task's alphabet;
- `TwoTurnSampler.with_instruction` swaps the turn-2 instruction and grows the extra-chunk
  budget to fit it (never shrinks it); an instruction that does not fit a sampler built
  directly fails naming config.rollout.max_instruction_len and the size it needs.
"""

import pytest

from score_jax.rl import rollout as rollout_lib
from score_jax.tasks import prompts
from score_jax.tasks import sorting
from score_jax.text import chat as chat_lib
from score_jax.text.tokenizer import CharTokenizer

GENERIC = prompts.SELF_REFINE_INSTRUCTION


def test_each_task_family_keeps_its_answer_format():
  math = prompts.self_refine_instruction("math")
  assert math == prompts.self_refine_instruction("gsm8k")
  # The paper's answer-format sentence, word for word, as in its MATH turn-2 instruction.
  form = math[math.index("At the end of the Solution"):]
  assert prompts.MATH_TURN2_INSTRUCTION.endswith(form) and form.endswith('correct."')
  code = prompts.self_refine_instruction("mbpp")
  assert code == prompts.self_refine_instruction("humaneval") and "```python" in code
  for name in ("sorting", "toy"):
    assert prompts.self_refine_instruction(name) == GENERIC
  assert GENERIC.startswith("Review your previous answer and find problems with it.")
  assert GENERIC.endswith("Reply with the improved answer only.")


def _two_turn(extra):
  task = sorting.SortingTask()
  tokenizer = CharTokenizer(task.alphabet())
  chat = chat_lib.chat_format("plain", tokenizer=tokenizer)
  return rollout_lib.TwoTurnSampler(None, tokenizer, chat, task,
                                    rollout_lib.Lengths(prompt=20, turn1=10, extra=extra,
                                                        turn2=10))


def test_with_instruction_grows_the_extra_budget_to_fit():
  two_turn = _two_turn(extra=24)                      # the demo's max_instruction_len
  assert two_turn.instruction == "Check and fix."
  refine = two_turn.with_instruction(GENERIC)
  # Plain chat: "\n\n" + instruction + "\n\n", one character per token, + end_of_turn.
  assert len(GENERIC) == 156 and refine.lengths.extra == 156 + 4 + 1
  assert (refine.lengths.prompt, refine.lengths.turn1, refine.lengths.turn2) == (20, 10, 10)
  assert refine.instruction == GENERIC and two_turn.lengths.extra == 24   # original kept
  tokens, valid = refine.extra_chunk([False, True])
  assert tokens.shape == (2, 161)
  texts = [refine.tokenizer.decode(row[ok].tolist()) for row, ok in zip(tokens, valid)]
  assert texts == ["<eot>\n\n" + GENERIC + "\n\n", "\n\n" + GENERIC + "\n\n"]
  # A shorter instruction keeps the budget as it was.
  assert two_turn.with_instruction("Fix.").lengths.extra == 24


def test_an_instruction_that_does_not_fit_names_the_config_field():
  task = sorting.SortingTask()
  tokenizer = CharTokenizer(task.alphabet())
  chat = chat_lib.chat_format("plain", tokenizer=tokenizer)
  with pytest.raises(ValueError) as e:
    rollout_lib.TwoTurnSampler(None, tokenizer, chat, task,
                               rollout_lib.Lengths(prompt=20, turn1=10, extra=24, turn2=10),
                               instruction=GENERIC)
  assert "needs 161 tokens" in str(e.value)
  assert "--config.rollout.max_instruction_len=161" in str(e.value)
