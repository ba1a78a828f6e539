"""Getting the benchmark data in the layout the tasks read.

  python -m score_jax.data prepare {math,math500,gsm8k,mbpp,humaneval} --out DATA_DIR \
      [--from LOCAL_UPSTREAM_COPY] [--force]

then run with `--config.task.data_dir=DATA_DIR`. `prepare` (`score_jax.data.prepare`) builds
one dataset from the Hugging Face Hub or a local copy of the upstream files (one module per
dataset: `hendrycks_math`, `gsm8k`, `mbpp`, `humaneval`); `layout` lists the files each task
reads and checks them at start-up (`check_task_data`, called by `score_jax.build`).
"""
