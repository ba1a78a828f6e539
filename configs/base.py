"""Every config field, with its default and a one-line meaning. Other configs start from this.

Not meant to be run directly (it trains a random tiny model on the toy task). Run:

  python -m score_jax.main --config configs/base.py --workdir runs/base

Defaults follow the paper (Kumar et al. 2024, Table 5: Adam, alpha 10, beta1 0.01, beta2 0.1,
temperature 1.0) where it gives them; the rest are our choices, all overridable with
`--config.section.field=value`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                         # one seed for init, data order and sampling
  c.distributed = False              # call jax.distributed.initialize() (multi-host)
  c.required_fields = ()             # dotted fields that must be non-empty, e.g. ("init.checkpoint",)

  # Device mesh (data, fsdp, tensor); -1 takes all remaining devices.
  c.mesh = ml_collections.ConfigDict(dict(
      data=1,                        # pure data parallelism
      fsdp=-1,                       # data parallel + parameter sharding
      tensor=1,                      # tensor (model) parallelism
      sampling_fsdp=True,            # False: rollouts decode from a per-step copy of the
                                     # params without FSDP sharding (score_jax.reshard)
  ))

  # Model architecture (ModelConfig fields). Ignored where init.checkpoint gives one.
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=0,                  # 0 -> the tokenizer's vocabulary size
      num_layers=2,                  # L
      embed_dim=64,                  # D
      hidden_dim=128,                # F (MLP width)
      num_heads=4,                   # N query heads
      num_kv_heads=2,                # K kv heads (GQA); 1 = MQA, N = MHA
      head_dim=16,                   # H
      family="llama",                # informational: llama | qwen2 | gemma | gemma2 | gemma3
      norm_style="rms",              # rms (x*w) | gemma_rms (x*(1+w))
      norm_eps=1e-6,                 # RMSNorm epsilon
      activation="silu",             # silu (SwiGLU) | gelu_tanh (GeGLU)
      rope_base=10_000.0,            # RoPE base (global layers)
      rope_local_base=ml_collections.FieldReference(None, field_type=float),  # local layers' base
      rope_scale_factor=1.0,         # linear RoPE position scaling (Gemma 3 global layers)
      qkv_bias=False,                # biases on q/k/v projections (Qwen2)
      qk_norm=False,                 # RMSNorm on q and k (Gemma 3)
      post_norms=False,              # sandwich norms after attention / MLP (Gemma 2/3)
      attn_logit_softcap=ml_collections.FieldReference(None, field_type=float),
      final_logit_softcap=ml_collections.FieldReference(None, field_type=float),
      sliding_window=ml_collections.FieldReference(None, field_type=int),
      layer_pattern=(),              # per-layer kinds, cycled, e.g. ("local", "global")
      query_pre_attn_scalar=ml_collections.FieldReference(None, field_type=float),
      scale_embeddings=False,        # multiply embeddings by sqrt(D) (Gemma)
      tie_embeddings=True,           # output projection = embedding^T
      dtype="float32",               # compute dtype (bfloat16 on accelerators)
      param_dtype="float32",         # parameter storage dtype
      remat="none",                  # rematerialisation: none | full | dots
      attention="auto",              # uncached attention: auto (cuDNN flash kernel on a GPU
                                     # when it fits: bf16, no soft-cap) | xla | cudnn
  ))

  # Where the initial (base) weights come from.
  c.init = ml_collections.ConfigDict(dict(
      checkpoint="",                 # HF dir / Gemma Orbax dir; "" -> random init (+ sft stage)
      params="",                     # a score_jax checkpoints dir (W/checkpoints): start from its
                                     # latest params, e.g. a base model trained by another run
  ))

  # Tokenizer.
  c.tokenizer = ml_collections.ConfigDict(dict(
      kind="char",                   # char (task alphabet) | sentencepiece | hf | auto
      path="",                       # tokenizer file or directory (not for char)
  ))
  c.chat_format = "plain"            # plain | gemma | llama3 | qwen2 | qwen2.5

  # Task and data.
  c.task = ml_collections.ConfigDict(dict(
      name="toy",                    # toy | math | gsm8k | mbpp | humaneval | demo task names
      data_dir="../shared/data",     # root of the benchmark files
      train_split="train",           # split used for RL rollouts
      eval_split="test",             # split used by the eval loop
      eval_limit=0,                  # evaluate on the first N problems (0 = all)
      num_shots=0,                   # gsm8k: worked exemplars in the prompt (0 = zero-shot)
      kinds="2d+,2d-,3d+,3d-,2dx,1dc",  # arithmetic: question kinds (tasks/arithmetic.py)
      workers=2,                     # grader / sandbox worker processes
      timeout_s=10.0,                # per-item grading / execution wall-clock limit
      sandbox_cgroups=True,          # code tasks: a cgroup per sandbox slot (memory and
                                     # process limits per run); False: per process only
      # Synthetic tasks only (toy, sorting, parity):
      min_len=5,                     # shortest word
      max_len=8,                     # longest word
      error_rate=0.3,                # the demonstrations' random-error rate
      blind_spot_rate=0.0,           # sorting: rate of the solver's systematic mistake;
                                     # parity: rate of its wrong first bit
  ))

  # Rollouts: attempt 1, then num_attempts - 1 corrections, each after the instruction.
  c.rollout = ml_collections.ConfigDict(dict(
      num_attempts=2,                # A >= 2 attempts per episode, in training, validation and
                                     # eval (paper: 2; more is our extension, see
                                     # score_jax.rl.objectives)
      max_prompt_len=64,             # turn-1 prompts are left-truncated to this many tokens
      max_turn1_tokens=16,           # max new tokens for y1
      max_turn2_tokens=16,           # max new tokens for y2 (and each later attempt)
      max_instruction_len=64,        # max tokens of the context appended before each
                                     # later attempt (end_of_turn + instruction turn)
      temperature=1.0,               # training sampling temperature (paper: 1.0)
      top_k=0,                       # 0 = off
      top_p=1.0,                     # 1.0 = off
      samples_per_prompt=2,          # k rollouts per prompt (leave-one-out needs k >= 2)
      offline_fraction=0.0,          # Stage II: share of first attempts taken from the base model
      star_right_right=True,         # STaR: also keep right -> right traces (the paper's D+)
      batching="fixed",              # fixed | continuous (score_jax.continuous: slots refilled
                                     # as rows stop; faster on long-tailed lengths)
      slots=0,                       # continuous: rows decoded at once (0 = the batch size)
      segment_steps=64,              # continuous: most decode steps between host refills
  ))

  # SCoRe objective (paper Table 5 defaults for MATH). The losses are token means over an
  # attempt (score_jax.rl.objectives), and so is the REINFORCE term: beta1 / beta2 weigh
  # the KL against the reward on the paper's scale (beta2 = 0.1 means the paper's 0.1).
  c.rl = ml_collections.ConfigDict(dict(
      alpha=10.0,                    # Stage II shaping: turn-2 bonus alpha * (r2 - r1)
      beta1=0.01,                    # default KL weight
      beta2=0.1,                     # Stage I KL weight on the first attempt
      kl_estimator="k1",             # k1 | k2 | k3 (per-token estimators of KL(pi || ref))
      kl_mode="reward",              # reward (per-sequence sum folded into the reward: with k1
                                     # this follows the gradient of the paper's sequence-level
                                     # KL) | loss (a KL term in the loss: k2 / k3 do not)
      baseline="loo",                # none | batch_mean | loo (leave-one-out over k samples)
      normalization="token",         # token | sequence (sequence weighs every attempt the same,
                                     # so a short attempt's tokens weigh more: length-biased)
      shaping_baseline=False,        # Stage II: drop -alpha r1 from the turn-2 reward (zero
                                     # expected gradient, only variance); beyond the paper
      stage2_reference="base",       # base | stage1: reference policy of Stage II
  ))

  # Stage plan: which stages run, in order, and for how many steps.
  c.plan = ml_collections.ConfigDict(dict(
      stages="stage1,stage2",        # comma list of sft | stage1 | stage2 | single_turn | star | pair_sft
      sft_steps=0,                   # supervised warm-up on task demonstrations (base model)
      stage1_steps=4,                # Stage I steps
      stage2_steps=4,                # Stage II steps
      single_turn_steps=0,           # single-turn RL steps (baseline)
      star_steps=0,                  # STaR steps (baseline: SFT on own successful corrections)
      pair_sft_steps=0,              # Pair-SFT steps (baseline: wrong attempt + correct answer)
      interleave=0,                  # >0: alternate Stage I / II blocks of this many steps
  ))

  # Optimiser (optax).
  c.optim = ml_collections.ConfigDict(dict(
      name="adam",                   # adam | adamw
      lr=1e-5,                       # peak learning rate (paper: 5e-6 MATH, 1e-5 MBPP)
      sft_lr=1e-3,                   # learning rate of the sft stage
      warmup_steps=0,                # linear warm-up steps
      schedule="constant",           # constant | cosine | linear (decay after warm-up)
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,              # adamw only
      clip_norm=1.0,                 # global gradient-norm clip (0 = off)
  ))

  # Training loop.
  c.train = ml_collections.ConfigDict(dict(
      batch_size=8,                  # prompts per step (x samples_per_prompt episodes)
      sft_batch_size=32,             # sequences per sft step
      micro_batches=1,               # gradient accumulation over this many micro-batches
      logit_chunk=0,                 # project to the vocabulary this many positions at a
                                     # time (0: all at once); memory only, same math
      compact_episodes="rows",       # drop padding before the step: "rows" packs each row's
                                     # needed columns to the left, "columns" drops those no
                                     # row needs (True: the same), False: off; speed only,
                                     # same math (tests/rl/test_compact.py, test_pack.py)
      compact_bucket=64,             # ... padding back to a multiple of this many columns
      log_every=1,                   # write train metrics every N steps
      max_nan_steps=3,               # stop after this many non-finite losses in a row
      tensorboard=True,              # also write TensorBoard scalars
  ))

  # Checkpoints (Orbax).
  c.checkpoint = ml_collections.ConfigDict(dict(
      every=2,                       # save every N steps (and at the end)
      keep=2,                        # keep the last K
      keep_best=True,                # also keep the best validated step (by best_metric)
      best_metric="acc_t2",          # validation metric that ranks steps: a metrics.KEYS key
                                     # (higher is better; "-delta_c2i": lower is better)
      async_save=True,               # save in the background
  ))

  # Eval loop (greedy two-turn decoding).
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=32,                 # problems per sampler call
      max_turn1_tokens=16,           # max new tokens for y1
      max_turn2_tokens=16,           # max new tokens for y2
      poll_s=5.0,                    # how often the watcher looks for new checkpoints
      timeout_s=3600.0,              # stop watching after this long without a new checkpoint
      # Validation during training (score_jax.validation): greedy two-turn eval of the params
      # being trained on a held-out split, whose metric picks the "best" checkpoint.
      validation_every=0,            # steps between validations, also at the last step
                                     # (0 = off: no extra cost; "best" is then the latest)
      validation_split="validation", # held-out split, disjoint from train and test
      validation_limit=0,            # validate on the first N problems (0 = all)
  ))
  # Experiments (configs/demo.py, configs/paper_table.py): "" runs one training run instead.
  c.experiment = ml_collections.ConfigDict(dict(
      methods="",                    # comma list of base | self_refine | star | pair_sft |
                                     # single_turn_rl | no_stage1 | no_shaping | star_stage2 |
                                     # score (score_jax.experiment.METHODS)
      seeds="",                      # comma list of seeds ("" -> config.seed)
      base_steps=0,                  # sft steps that build the base model
      rl_steps=0,                    # RL steps of each RL method
      stage1_fraction=0.5,           # share of rl_steps spent in Stage I (SCoRe and ablation)
      sft_baseline_steps=0,          # steps of STaR / Pair-SFT
      sft_baseline_lr=1e-4,          # learning rate of STaR / Pair-SFT
      checkpoint="best",             # step each trained method is evaluated at: best (by
                                     # validation; latest without) | latest | a step number
  ))
  return c
