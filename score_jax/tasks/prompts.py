"""The prompt texts of the SCoRe paper (Kumar et al. 2024, arXiv 2409.12917), verbatim.

These strings are data for reproduction: do not reword them. Tasks import them from here
(math and GSM8K: `MATH_TURN1_INSTRUCTION`, `MATH_TURN2_INSTRUCTION`; MBPP / HumanEval:
`MBPP_TURN1_TEMPLATE`, `MBPP_FEWSHOT_TASK_IDS`, `CODE_TURN2_INSTRUCTION`).
How a task lays out the instruction and the problem is documented in the task module.

The Self-Refine turn-2 instructions at the end (`self_refine_instruction`) are the one
exception: they are our wording, not the paper's (their source is given there).
"""

# MATH, turn 1 (zero-shot instruction placed before the problem).
MATH_TURN1_INSTRUCTION = (
    "You are a math expert. When you respond, respond only with the Solution of the final "
    "Problem, thinking step by step. At the end of the Solution, when you give your final "
    "answer, write it in the form \"Final Answer: The final answer is $answer$. I hope it is "
    "correct.\"")

# MATH, turn 2: the fixed self-correction instruction p (never reveals whether y1 was right).
MATH_TURN2_INSTRUCTION = (
    "There might be an error in the solution above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution. Only output the "
    "final solution! At the end of the Solution, when you give your final answer, write it in "
    "the form \"Final Answer: The final answer is $answer$. I hope it is correct.\"")

# Code, turn 1: the standard MBPP 3-shot prompt (Austin et al. 2021). Each exemplar and the
# final query use this template; for the query, `code` is left for the model to write (the
# prompt ends after "[BEGIN]\n"). `tests` is the task's assert lines joined with "\n".
MBPP_TURN1_TEMPLATE = (
    "You are an expert Python programmer, and here is your task: {text} "
    "Your code should pass these tests:\n\n{tests}\n[BEGIN]\n{code}\n[DONE]")

# The MBPP task ids of the three few-shot exemplars.
MBPP_FEWSHOT_TASK_IDS = (2, 3, 4)

# Code, turn 2: the fixed self-correction instruction for code.
CODE_TURN2_INSTRUCTION = (
    "There might be an error in the code above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution. Only output the "
    "final correct Python program!")


# ---- Self-Refine (the paper's prompting baseline; `self_refine` in score_jax.experiment).
# Source: Madaan et al. 2023, "Self-Refine: Iterative Refinement with Self-Feedback",
# arXiv 2303.17651: the same model first writes FEEDBACK on its output (what is wrong with
# it), then a REFINEd output based on that feedback, with few-shot, task-specific prompts.
# Ours is a zero-shot, one-turn adaptation for the two-attempt protocol: the turn-2
# instruction asks for the critique and then the improved answer, and keeps the task's
# answer format so that the second attempt is graded like any other. The wording is ours
# (no prompt text is copied from either paper); do not reword it without rerunning the table.

# Tasks whose reward reads the whole response (toy, sorting): the critique stays unwritten.
SELF_REFINE_INSTRUCTION = (
    "Review your previous answer and find problems with it. Then, based on the problems "
    "you found, write an improved answer. Reply with the improved answer only.")

# MATH and GSM8K: the grader reads the LAST final answer, so the critique may precede the
# solution; the answer format is the paper's (MATH_TURN2_INSTRUCTION's last sentence).
SELF_REFINE_MATH_INSTRUCTION = (
    "Review your previous solution and find problems with it. Then, based on the problems "
    "you found, write an improved solution. At the end of the Solution, when you give your "
    "final answer, write it in the form \"Final Answer: The final answer is $answer$. I hope "
    "it is correct.\"")

# MBPP and HumanEval: the program is taken from the first ``` block (score_jax.tasks.code),
# so the critique must not contain one.
SELF_REFINE_CODE_INSTRUCTION = (
    "Review your previous code and find problems with it; describe them in plain text, "
    "without code. Then, based on the problems you found, write the improved, final "
    "correct Python program in one ```python code block.")

# Arithmetic (score_jax.tasks.arithmetic, GPT-3's questions for base models): not from the
# SCoRe paper, whose instructions are written for chat models. Both are a new question in the
# task's "Q: ... A:" form, so that a base model's next line is its answer; the grader reads
# only that first line, so the Self-Refine critique stays unwritten.
ARITHMETIC_TURN2_INSTRUCTION = (
    "Q: There might be an error in the answer above. What is the correct answer? A:")
SELF_REFINE_ARITHMETIC_INSTRUCTION = (
    "Q: Review the answer above and find problems with it. Based on the problems you found, "
    "what is the improved answer? A:")

SELF_REFINE_INSTRUCTIONS = {"arithmetic": SELF_REFINE_ARITHMETIC_INSTRUCTION,
                            "math": SELF_REFINE_MATH_INSTRUCTION,
                            "gsm8k": SELF_REFINE_MATH_INSTRUCTION,
                            "mbpp": SELF_REFINE_CODE_INSTRUCTION,
                            "humaneval": SELF_REFINE_CODE_INSTRUCTION}


def self_refine_instruction(task_name: str) -> str:
  """The Self-Refine turn-2 instruction for task `task_name` (config.task.name)."""
  return SELF_REFINE_INSTRUCTIONS.get(task_name, SELF_REFINE_INSTRUCTION)
