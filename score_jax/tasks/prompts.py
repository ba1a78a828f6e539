"""The prompt texts of the SCoRe paper (Kumar et al. 2024, arXiv 2409.12917), verbatim.

These strings are data for reproduction: do not reword them. Tasks import them from here
(math and GSM8K: `MATH_TURN1_INSTRUCTION`, `MATH_TURN2_INSTRUCTION`; MBPP / HumanEval:
`MBPP_TURN1_TEMPLATE`, `MBPP_FEWSHOT_TASK_IDS`, `CODE_TURN2_INSTRUCTION`).
How a task lays out the instruction and the problem is documented in the task module.
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
