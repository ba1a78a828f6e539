"""What gets installed: pyproject.toml's tested ranges, requirements.txt's exact CI pins, the
accelerator / cloud extras, and the TPU setup script's pip call all agree.

pyproject.toml gives the JAX stack as ranges (so `pip install -e .` keeps a JAX that Colab, a
TPU VM or a CUDA image already has when it is inside them); requirements*.txt pin the exact set
CI installs, the high end of those ranges. The low ends were run on the suite subset named in
pyproject.toml's comment (see the install notes in README.md).
"""

import importlib.metadata
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO_ROOT

# The JAX stack whose versions are ranges in pyproject.toml and exact pins in requirements.txt.
STACK = ("jax", "flax", "orbax-checkpoint", "optax", "ml-collections")
ACCELERATOR_EXTRAS = {"cuda": "cuda12", "cuda12": "cuda12", "cuda13": "cuda13", "tpu": "tpu"}


def _name(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
  return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _dependencies() -> dict[str, Requirement]:
  return {_name(r.name): r for r in map(Requirement, _project()["dependencies"])}


def _pins(filename: str = "requirements.txt") -> dict[str, Version]:
  """The `name==version` lines of a requirements file (extras dropped)."""
  pins = {}
  for line in (REPO_ROOT / filename).read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line and not line.startswith("-"):
      req = Requirement(line)
      (spec,) = req.specifier
      assert spec.operator == "==", f"{filename}: {line!r} is not an exact pin (name==version)"
      pins[_name(req.name)] = Version(spec.version)
  return pins


def _bounds(req: Requirement) -> tuple[Version, Version]:
  ops = {s.operator: Version(s.version) for s in req.specifier}
  assert set(ops) == {">=", "<="}, (
      f"pyproject.toml: {req} must be a tested range '>=LOW,<=HIGH' (both ends tested)")
  return ops[">="], ops["<="]


def test_runtime_dependencies_are_pinned_exactly_in_requirements_txt():
  pins = _pins()
  missing = sorted(set(_dependencies()) - set(pins))
  assert not missing, f"requirements.txt lacks exact pins for {missing} (pyproject.toml needs them)"
  assert pins["jaxlib"] == pins["jax"], "requirements.txt: jaxlib must equal jax"


@pytest.mark.parametrize("name", STACK)
def test_stack_range_tops_out_at_the_ci_pin(name):
  """Each JAX-stack package is a range whose high end is CI's exact pin."""
  low, high = _bounds(_dependencies()[name])
  assert low <= high
  assert high == _pins()[name], (
      f"pyproject.toml's {name} range ends at {high} but requirements.txt pins {_pins()[name]}: "
      f"the high end of a tested range is the version CI runs")


def test_requirements_test_pulls_the_runtime_pins():
  text = (REPO_ROOT / "requirements-test.txt").read_text()
  assert re.search(r"^-r requirements\.txt$", text, re.M)
  assert not set(_pins("requirements-test.txt")) & set(STACK), (
      "requirements-test.txt must not pin the JAX stack again (requirements.txt does)")


@pytest.mark.parametrize("extra", sorted(ACCELERATOR_EXTRAS))
def test_accelerator_extras_follow_the_jax_range(extra):
  (req,) = map(Requirement, _project()["optional-dependencies"][extra])
  assert _name(req.name) == "jax" and req.extras == {ACCELERATOR_EXTRAS[extra]}
  assert req.specifier == _dependencies()["jax"].specifier, (
      f"pyproject.toml: the [{extra}] extra asks for {req} but the jax dependency is "
      f"{_dependencies()['jax']}: keep them the same range")


def test_gcs_extra_has_what_gs_paths_need():
  """etils/Orbax read gs:// through gcsfs; tensorboardX's writer through google-cloud-storage."""
  names = {_name(Requirement(r).name) for r in _project()["optional-dependencies"]["gcs"]}
  assert {"gcsfs", "google-cloud-storage"} <= names


@pytest.mark.parametrize("name", STACK + ("jaxlib",))
def test_this_environment_is_inside_the_ranges(name):
  """The JAX stack the tests run on is one pyproject.toml allows."""
  installed = importlib.metadata.version(name)
  req = _dependencies().get(name) or _dependencies()["jax"]   # jaxlib follows jax
  assert req.specifier.contains(installed, prereleases=True), (
      f"{name} {installed} is installed, outside pyproject.toml's {req}: "
      f"pip install -r requirements-test.txt")


def test_tpu_setup_installs_the_tpu_and_gcs_extras_at_the_ci_pins():
  """tpu_worker.sh setup: one pip call with jax[tpu] at requirements.txt's jax, the exact pins,
  and the project's [tpu,gcs] extras (gs:// work directories need gcsfs)."""
  worker = (REPO_ROOT / "launch" / "tpu_worker.sh").read_text()
  call = re.search(r'^\s*"\$VENV/bin/python" -m pip install -q "jax\[tpu\]==\$JAX_VERSION"(.*)$',
                   worker.replace("\\\n", " "), re.M)   # continuation lines joined
  assert call, "launch/tpu_worker.sh: the setup pip call with jax[tpu]==$JAX_VERSION is missing"
  assert "-r requirements.txt" in call.group(1) and '-e ".[tpu,gcs]"' in call.group(1)
  jax_pin = str(_pins()["jax"])
  for script in ("tpu_worker.sh", "tpu_setup.sh"):
    text = (REPO_ROOT / "launch" / script).read_text()
    defaults = re.findall(r"JAX_VERSION=([0-9.]+)", text)
    assert defaults and set(defaults) == {jax_pin}, (
        f"launch/{script}: default --jax-version {defaults} != requirements.txt's jax {jax_pin}")
