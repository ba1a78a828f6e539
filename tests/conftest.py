"""Test setup: CPU JAX with 8 host devices, so that sharding runs on a real mesh.

The environment variables must be set before JAX is imported anywhere.
"""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
# XLA compilations dominate the CPU test time; tests (and the CLI subprocesses they start,
# which inherit these variables) reuse compiled programs through JAX's persistent cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real benchmark files in ../shared/data (never copied into the repo)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} not found: the tests read the real data from there")
  return SHARED_DATA


@pytest.fixture(scope="module")
def mbpp(shared_data):
  """The real MBPP task (its sandbox pool closed after the module)."""
  from score_jax.tasks import code  # pylint: disable=import-outside-toplevel
  task = code.MBPPTask(shared_data, workers=2, timeout_s=20.0)
  yield task
  task.close()


@pytest.fixture(scope="module")
def humaneval(shared_data):
  """The real HumanEval task (its sandbox pool closed after the module)."""
  from score_jax.tasks import code  # pylint: disable=import-outside-toplevel
  task = code.HumanEvalTask(shared_data, workers=2, timeout_s=20.0)
  yield task
  task.close()
