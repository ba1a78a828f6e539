"""The Colab notebook runs top to bottom (reduced settings), so that it never rots; its install
cell keeps an accelerator JAX that is in the tested range and names no placeholder URL."""

import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO_ROOT / "notebooks" / "score_jax_demo.ipynb"


def _code_cell(marker: str) -> str:
  """The source of the one code cell that contains `marker`."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  (source,) = [c.source for c in nb.cells if c.cell_type == "code" and marker in c.source]
  return source


def _helpers() -> dict:
  """The functions of the notebook's install-helpers cell (pure; the next cell runs them)."""
  namespace: dict = {}
  exec(compile(_code_cell("def pip_install_args"), str(NOTEBOOK), "exec"), namespace)  # noqa: S102
  return namespace


def _jax_pin() -> str:
  return re.search(r"^jax==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M).group(1)


def test_install_keeps_a_jax_in_the_tested_range_and_replaces_one_outside_it():
  h = _helpers()
  base = ["install", "-q", "-e", str(REPO_ROOT)]
  pin = _jax_pin()
  spec, tested_pin = h["tested_jax"](REPO_ROOT)
  assert tested_pin == pin and spec.contains(pin)
  low = min(s.version for s in spec if s.operator == ">=")
  # Colab's GPU / TPU jax inside the range: pip is not asked for jax at all.
  for version in (low, pin):
    for extra in ("cuda12", "cuda13", "tpu", None):
      assert h["pip_install_args"](REPO_ROOT, version, extra) == base
  assert h["pip_install_args"](REPO_ROOT, None, None) == base       # no jax yet: pip's range
  # Outside the range: the tested jax with the accelerator the runtime has, never a CPU jax.
  assert h["pip_install_args"](REPO_ROOT, "0.4.30", "cuda12") == base + [f"jax[cuda12]=={pin}"]
  assert h["pip_install_args"](REPO_ROOT, "99.0.0", "tpu") == base + [f"jax[tpu]=={pin}"]
  assert h["pip_install_args"](REPO_ROOT, "0.4.30", None) == base + [f"jax=={pin}"]


def test_accelerator_extra_follows_the_installed_plugin():
  extra = _helpers()["accelerator_extra"]

  def installed(*dists):
    def version(dist):
      if dist not in dists:
        raise importlib.metadata.PackageNotFoundError(dist)
      return "1.0"
    return version

  assert extra(installed("jax-cuda12-plugin", "jax-cuda12-pjrt")) == "cuda12"
  assert extra(installed("jax-cuda13-plugin")) == "cuda13"
  assert extra(installed("libtpu")) == "tpu"
  assert extra(installed()) is None


def test_find_checkout(tmp_path):
  find = _helpers()["find_checkout"]
  assert find(REPO_ROOT / "notebooks") == REPO_ROOT
  assert find(REPO_ROOT) == REPO_ROOT
  assert find(tmp_path) is None


def test_no_placeholder_url_and_no_unconditional_jax_install():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  assert not re.search(r"https?://", code), "a URL in a code cell (REPO_URL comes from the user)"
  assert "score-jax/score_jax" not in nb.cells[0].source + code
  assert not re.search(r"^\s*[!%]", code, re.M), "shell magics: pip runs through pip_install_args"
  install = _code_cell("find_checkout(pathlib")
  assert code.count('"-m", "pip"') == 1 and "args = pip_install_args(" in install
  assert "jax[" not in install and "jax==" not in install   # jax only via pip_install_args


def test_outside_a_checkout_without_repo_url_is_one_clear_error(tmp_path):
  """Opened on its own (Colab upload) with no REPO_URL: a RuntimeError saying what to set."""
  script = "\n".join([_code_cell("def pip_install_args"), _code_cell("find_checkout(pathlib")])
  env = {k: v for k, v in os.environ.items() if k != "SCORE_JAX_REPO"}
  result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("RuntimeError: score_jax: this notebook is not inside a checkout")
  assert "REPO_URL" in last and "SCORE_JAX_REPO" in last


def test_notebook_executes(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # The kernel imports score_jax from this checkout, as after `pip install -e .` here, so the
  # install cell finds it and runs no pip (whatever checkout this environment's install names).
  path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
  env = {"SCORE_JAX_NOTEBOOK_FAST": "1", "SCORE_JAX_NOTEBOOK_WORKDIR": str(tmp_path / "demo"),
         "PYTHONPATH": path}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    client = nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}})
    client.execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert f"score_jax from {REPO_ROOT} is installed already" in outputs   # nothing reinstalled
  assert f"jax {importlib.metadata.version('jax')}" in outputs
  assert "Set SCORE_JAX_CHECKPOINT" in outputs
  assert (tmp_path / "demo" / "results.json").exists()
  assert (tmp_path / "demo" / "plots" / "training.png").exists()
