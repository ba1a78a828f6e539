"""A gs:// work directory without the [gcs] extra: one line naming the install command."""

import subprocess
import sys

import pytest

from score_jax import run_config
from tests.conftest import REPO_ROOT

# Makes the [gcs] packages absent in a child process, whether or not they are installed here.
NO_GCS = ("import sys, runpy; sys.modules['gcsfs'] = None; "
          "sys.modules['google.cloud.storage'] = None; sys.argv[0] = '{module}'; "
          "runpy.run_module('{module}', run_name='__main__')")


@pytest.mark.parametrize("missing", [("gcsfs",), ("google.cloud.storage",),
                                     ("gcsfs", "google.cloud.storage")])
def test_gs_path_without_the_gcs_extra_names_the_install_command(monkeypatch, missing):
  for module in missing:
    monkeypatch.setitem(sys.modules, module, None)
  with pytest.raises(ImportError) as e:
    run_config.check_cloud_path("gs://my-bucket/runs/x")
  text = str(e.value)
  assert text.startswith("gs://my-bucket/runs/x: a gs:// path needs ")
  assert "pip install -e '.[gcs]'" in text and "\n" not in text
  named = {"gcsfs": "gcsfs", "google.cloud.storage": "google-cloud-storage"}
  assert all(named[m] in text.split(" (not installed)")[0] for m in missing)


def test_local_paths_need_no_gcs(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "gcsfs", None)
  run_config.check_cloud_path(tmp_path)             # no error: a local path
  run_config.check_workdir(tmp_path / "w", create=True)
  assert (tmp_path / "w").is_dir()


@pytest.mark.parametrize("module,args", [
    ("score_jax.main", ["--config", "configs/tiny.py"]),
    ("score_jax.evaluate", ["--config", "configs/tiny.py", "--once"]),
])
def test_cli_with_a_gs_workdir_and_no_gcs_extra_is_one_line(module, args):
  result = subprocess.run(
      [sys.executable, "-c", NO_GCS.format(module=module), *args,
       "--workdir", "gs://my-bucket/runs/x"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1, result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines == ["error: gs://my-bucket/runs/x: a gs:// path needs gcsfs and "
                   "google-cloud-storage (not installed): pip install -e '.[gcs]' in the "
                   "score_jax checkout (or pip install gcsfs google-cloud-storage)"], lines
