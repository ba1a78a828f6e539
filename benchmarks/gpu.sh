#!/usr/bin/env bash
# Every GPU figure in one sitting on one card: sampler and train step vs transformers on the
# anchor workload, then memory / step time with and without remat and the reshard.
#
#   OUT=/tmp/gpu bash benchmarks/gpu.sh            # logs and JSON lines land in $OUT
#
# A machine whose Python lacks our pinned pure-Python packages (flax, ml-collections, ...)
# can be given them as wheels in .whl/ (see benchmarks/README.md, "GPU machine"); they are
# installed into /tmp/site first. Each part has its own time limit so that one slow part
# cannot eat the others' time; PART_LIMIT_S (default 200) sets it. PARTS picks parts
# (default: all of "sampler attention train_step memory rl_step rl_step_qwen"). rl_step*: one
# whole Stage II step with a MATH length distribution beside transformers' two-turn rollout
# (benchmarks/rl_step.py; RL_LIMIT_S, default 420, limits each of them).
set -u -o pipefail
OUT=${OUT:-/tmp/score_jax_gpu}
LIMIT=${PART_LIMIT_S:-200}
PARTS=${PARTS:-sampler attention train_step memory rl_step rl_step_qwen}
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G ".whl/*.whl" >/dev/null; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import jax, flax, optax, orbax.checkpoint, torch, transformers
print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "torch", torch.__version__,
      "transformers", transformers.__version__)' 2>&1 | tee -a "$OUT/gpu.txt"

part() {  # name, command...
  local name=$1; shift
  [[ " $PARTS " == *" $name "* ]] || return 0
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$LIMIT" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "=== $name: rc=${PIPESTATUS[0]} in $((SECONDS - t0)) s"
}
part sampler python3 benchmarks/sampler.py --workload anchor --static --reps 5
part attention env JAX_PLATFORMS=cuda python3 benchmarks/attention.py
part train_step python3 benchmarks/train_step.py --workload anchor --reps 5 --also-xla-attention
part memory env JAX_PLATFORMS=cuda python3 benchmarks/memory.py --anchor --devices 1 \
  --remat "${MEMORY_REMAT:-none,full,dots}" \
  --dtype bfloat16 --reps 5 --warmup 1
LIMIT=${RL_LIMIT_S:-420} part rl_step python3 benchmarks/rl_step.py --workload anchor --reps 2
LIMIT=${RL_LIMIT_S:-420} part rl_step_qwen python3 benchmarks/rl_step.py --workload qwen1p5b \
  --reps 1
