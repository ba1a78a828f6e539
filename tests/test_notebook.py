"""The Colab notebook runs top to bottom (reduced settings), so that it never rots."""

import os

import pytest

from tests.conftest import REPO_ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_notebook_executes(tmp_path):
  path = REPO_ROOT / "notebooks" / "score_jax_demo.ipynb"
  nb = nbformat.read(path, as_version=4)
  env = {"SCORE_JAX_NOTEBOOK_FAST": "1", "SCORE_JAX_NOTEBOOK_WORKDIR": str(tmp_path / "demo")}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    client = nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO_ROOT)}})
    client.execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "Set SCORE_JAX_CHECKPOINT" in outputs
  assert (tmp_path / "demo" / "results.json").exists()
  assert (tmp_path / "demo" / "plots" / "training.png").exists()
