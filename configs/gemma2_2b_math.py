"""SCoRe on MATH with Gemma 2 2B it: the paper's MATH recipe (Table 5) at 2B scale.

Train (every worker of the TPU slice runs the same command; the checkpoint directory must
exist on each worker, e.g. `huggingface-cli download google/gemma-2-2b-it --local-dir
$HOME/models/gemma-2-2b-it` run with `gcloud compute tpus tpu-vm ssh ... --worker=all`):

  python -m score_jax.main --config configs/gemma2_2b_math.py \
      --workdir gs://BUCKET/runs/gemma2-2b-math \
      --config.init.checkpoint=$HOME/models/gemma-2-2b-it --config.distributed=True

or from your machine: `launch/tpu_train.sh --name NAME --zone ZONE --config
configs/gemma2_2b_math.py --workdir gs://BUCKET/runs/gemma2-2b-math
--config.init.checkpoint=/home/USER/models/gemma-2-2b-it`.

Evaluate (a separate process, e.g. on its own v5p-8; follows the checkpoints as they appear,
greedy two-turn decoding on MATH500, metrics in W/eval/metrics.jsonl):

  python -m score_jax.evaluate --config configs/gemma2_2b_math.py \
      --workdir gs://BUCKET/runs/gemma2-2b-math \
      --config.init.checkpoint=$HOME/models/gemma-2-2b-it --config.distributed=False

`config.init.checkpoint` is required (`required_fields`): a Hugging Face directory with
config.json, model*.safetensors and tokenizer.json. The tokenizer comes from it
(tokenizer.kind="auto"); prompts use the Gemma chat template.

Paper hyperparameters (Kumar et al. 2024, Table 5, MATH): Adam, lr 5e-6, 3000 steps,
temperature 1.0, alpha 10, beta1 0.01, beta2 0.1. Our choices:
* Stage split: 1000 Stage I steps, then 2000 Stage II steps (3000 in all); Stage II's
  reference is the base model.
* Batch: 32 problems x 4 samples = 128 episodes per step (the paper: 512), sized for a
  v5p-8 (4 chips, 95 GB HBM each). Per chip, roughly: 16 GB for fp32 params, Adam moments,
  gradients and the base/reference copies; 9 GB of bf16 KV cache (128 rows x 2,688 slots);
  ~16 GB for the logits of one micro-batch (2 rows x 2,688 x 256,000, fp32, with softmax and
  gradient). For the paper's 512 on a v5p-32: --config.train.batch_size=128
  --config.train.micro_batches=32.
* 4 samples per problem with a leave-one-out baseline; the KL is k1 summed per attempt and
  folded into the reward (REINFORCE then follows the gradient of the paper's sequence-level
  KL(pi || ref); score_jax.rl.objectives); constant learning rate, gradient clipping at 1.0.
* Lengths: prompt 512 tokens (left-truncated beyond), each attempt up to 1024 tokens, 128
  tokens for end-of-turn + the turn-2 instruction.
* bf16 compute, fp32 params (an lr of 5e-6 is below bf16's resolution), full remat.
* Checkpoint every 100 steps, keep the last 3 and the best by greedy acc_t2 on the 500
  problems held out of the training split (validated every 250 steps).
"""

from configs import base as base_config

# Training episodes per step = train.batch_size x rollout.samples_per_prompt.
PROBLEMS_PER_STEP = 32
SAMPLES_PER_PROBLEM = 4


def get_config():
  c = base_config.get_config()
  # Fields that must be set on the command line; the trainer and eval loop refuse to start
  # while one is empty (score_jax.rl.plan.validate).
  c.required_fields = ("init.checkpoint",)
  c.init.checkpoint = ""             # REQUIRED: HF directory of google/gemma-2-2b-it
  c.tokenizer.update(kind="auto", path="")
  c.chat_format = "gemma"
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  # The architecture comes from the checkpoint's config.json; these apply to it.
  c.model.update(family="gemma2", dtype="bfloat16", param_dtype="float32", remat="full")

  c.task.update(name="math", data_dir="../shared/data", train_split="train",
                eval_split="test", eval_limit=0, workers=32, timeout_s=10.0)
  c.rollout.update(max_prompt_len=512, max_turn1_tokens=1024, max_turn2_tokens=1024,
                   max_instruction_len=128, temperature=1.0, top_k=0, top_p=1.0,
                   samples_per_prompt=SAMPLES_PER_PROBLEM, offline_fraction=0.0)
  c.rl.update(alpha=10.0, beta1=0.01, beta2=0.1, kl_estimator="k1", kl_mode="reward",
              baseline="loo", normalization="token", stage2_reference="base")
  c.plan.update(stages="stage1,stage2", sft_steps=0, stage1_steps=1000, stage2_steps=2000,
                single_turn_steps=0, interleave=0)
  c.optim.update(name="adam", lr=5e-6, warmup_steps=0, schedule="constant", b1=0.9,
                 b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0)
  # Gemma's 256k vocabulary: project 256 positions at a time (scoring.sequence_stats).
  c.train.update(batch_size=PROBLEMS_PER_STEP, micro_batches=16, logit_chunk=256, log_every=1,
                 max_nan_steps=3, tensorboard=True)
  c.checkpoint.update(every=100, keep=3, keep_best=True, async_save=True)
  c.eval.update(batch_size=100, max_turn1_tokens=1024, max_turn2_tokens=1024, poll_s=60.0,
                timeout_s=6 * 3600.0, validation_every=250, validation_split="validation")
  return c
