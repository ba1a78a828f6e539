"""Export a training run's checkpoint as a Hugging Face model directory.

  python -m score_jax.export --workdir W [--step best|latest|N] --out DIR
      [--dtype float32|bfloat16] [--init-checkpoint PATH] [--push-to-hub org/name]

Reads the run's own config (`W/config.json`, written by the trainer), picks a step of
`W/checkpoints` as the eval loop does (`best`: the best validated step by
config.checkpoint.best_metric, the latest when no step was validated; `latest`; a step
number) and prints which step and why, then writes DIR with `hub.hf_export.export_model`:
config.json, model.safetensors, the tokenizer files and generation_config.json, which
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads.

For a run initialised from a pretrained model (config.init.checkpoint: an HF directory,
a .gguf file or a Hub id) no weights of that model are read: its config.json (or GGUF
metadata), tokenizer and generation config give the architecture and what is carried
over (token ids, max_position_embeddings; rope, softcaps and layer kinds come from the
same ModelConfig the run trained), and the checkpoint's params are restored into an
abstract target. `--init-checkpoint` replaces the recorded path (e.g. a run trained
on another machine). A run from random init (no init.checkpoint) is exported with its
config.model; a char tokenizer has no Hugging Face form, so none is written then.

`--push-to-hub org/name` then uploads DIR with `huggingface_hub` (needs it installed,
network and a token: `hf auth login`). Every mistake is one line on stderr naming the
path or field and the fix (exit status 1); a traceback only with `--verbose`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

import jax
import ml_collections

from score_jax import checkpoint as checkpoint_lib
from score_jax import mesh as mesh_lib
from score_jax import run_config
from score_jax.hub import hf_export
from score_jax.hub import lm as lm_lib
from score_jax.hub import resolve as resolve_lib
from score_jax.text import chat as chat_lib
from score_jax.text import tokenizer as tokenizer_lib


def read_run_config(workdir: str | pathlib.Path, log=print) -> ml_collections.ConfigDict:
  """The config the run in `workdir` was trained with (`run_config.load_run_config`: its
  W/config.json, fields added since then from configs/base.py, each noted)."""
  if not checkpoint_lib.as_path(workdir).is_dir():
    raise FileNotFoundError(f"--workdir {workdir} does not exist: pass the --workdir of a "
                            f"training run (python -m score_jax.main ... --workdir W)")
  config, notes = run_config.load_run_config(workdir)
  for note in notes:
    log(f"note: {note}")
  return config


def _tokenizer(config: ml_collections.ConfigDict, init_tokenizer):
  """The run's tokenizer: the init model's ("auto"), else config.tokenizer's (None for
  "char", which has no Hugging Face form)."""
  kind = config.tokenizer.kind
  if kind == "auto":
    return init_tokenizer
  if kind == "char":
    return None
  return tokenizer_lib.tokenizer_from_config(config.tokenizer.to_dict())


def _init_checkpoint(config, override: str | None) -> str:
  path = override or config.init.checkpoint
  text = str(path)
  if (not pathlib.Path(text).expanduser().exists() and not resolve_lib.is_hub_id(text)):
    where = "--init-checkpoint" if override else "config.init.checkpoint in the run's config.json"
    raise FileNotFoundError(f"{where}={text!r} does not exist here (a relative path is taken "
                            f"from the current directory: run from where training ran), or "
                            f"pass --init-checkpoint PATH")
  return text


def run_model(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None,
              init_checkpoint: str | None = None) -> lm_lib.LM:
  """The run's model with ABSTRACT params (a restore target): architecture, tokenizer,
  chat format, the init model's HF config and generation config."""
  param_dtype, dtype = config.model.param_dtype, config.model.dtype
  if config.init.checkpoint or init_checkpoint:
    source = _init_checkpoint(config, init_checkpoint)
    init = lm_lib.load(source, dtype=param_dtype, compute_dtype=dtype, mesh=mesh,
                       with_params=False)
    model_config = init.config.replace(remat=config.model.remat,
                                       attention=config.model.attention)
    tok = _tokenizer(config, init.tokenizer)
    hf_config, generation = init.hf_config, init.generation_config
    has_template = init.has_chat_template if tok is init.tokenizer else None
  else:   # random init: the trainer's own components (the task gives a char alphabet)
    from score_jax import build as build_lib  # pylint: disable=import-outside-toplevel
    c = build_lib.build(config, with_params=False)
    getattr(c.task, "close", lambda: None)()
    source, model_config = "config.model", c.model_config
    tok = None if config.tokenizer.kind == "char" else c.tokenizer
    hf_config = generation = has_template = None
  graphdef, abstract = lm_lib.abstract_model(model_config, mesh)
  chat = (chat_lib.chat_format(config.chat_format, tokenizer=tok) if tok is not None
          else None)
  return lm_lib.LM(config=model_config, graphdef=graphdef, params=abstract, tokenizer=tok,
                   chat=chat, source=source, mesh=mesh, hf_config=hf_config,
                   generation_config=generation, has_chat_template=has_template)


def restore_step(workdir: str | pathlib.Path, lm: lm_lib.LM, step: str | int,
                 best_metric: str) -> tuple[Any, int, str]:
  """(params, step, why) of the chosen step (falling back as the eval loop does when
  the chosen one is corrupt), restored into `lm.params`' shapes and shardings."""
  ckpt_dir = checkpoint_lib.as_path(workdir) / "checkpoints"
  choices = checkpoint_lib.candidates(ckpt_dir, step, best_metric)
  reader = checkpoint_lib.Checkpointer(ckpt_dir, read_only=True, keep_best=False)
  params, _, _, chosen, _ = reader.restore_first_good([s for s, _ in choices], lm.params)
  return params, chosen, dict(choices)[chosen]


def push_to_hub(out: pathlib.Path, repo_id: str) -> str:
  """Uploads `out` to the Hub model repo `repo_id` (created if needed); returns its URL."""
  if not resolve_lib.is_hub_id(repo_id):
    raise ValueError(f"--push-to-hub={repo_id!r} is not a Hub repo id; expected org/name")
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"--push-to-hub needs huggingface_hub (pip install huggingface_hub); "
                      f"the model is in {out}") from e
  if resolve_lib.offline():
    raise ConnectionError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set; the model is in "
                          f"{out}: upload it later with hf upload {repo_id} {out}")
  try:
    api = huggingface_hub.HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    info = api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="model",
                             commit_message="Upload a score_jax export")
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).splitlines() or [""])[0]
    raise ConnectionError(f"--push-to-hub {repo_id} failed ({type(e).__name__}: {first}); "
                          f"the model is in {out}: check the network and hf auth login, "
                          f"then hf upload {repo_id} {out}") from e
  return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")


def export_run(workdir: str | pathlib.Path, out: str | pathlib.Path, *,
               step: str | int = "best", dtype: str | None = None,
               init_checkpoint: str | None = None, hub_repo: str | None = None,
               log=print) -> tuple[pathlib.Path, int]:
  """Writes step `step` of the run in `workdir` to `out` (see the module docstring);
  returns (out, the exported step)."""
  step = checkpoint_lib.parse_choice(step, "--step")
  config = read_run_config(workdir, log)
  if hub_repo is not None and not resolve_lib.is_hub_id(hub_repo):
    raise ValueError(f"--push-to-hub={hub_repo!r} is not a Hub repo id; expected org/name")
  mesh = mesh_lib.make_mesh(data=1, fsdp=-1, tensor=1)   # any device count: params only
  lm = run_model(config, mesh, init_checkpoint)
  params, chosen, why = restore_step(workdir, lm, step,
                                     config.checkpoint.get("best_metric", "acc_t2"))
  log(f"exporting step {chosen}: {why}")
  if lm.tokenizer is None:
    log(f"note: the run's tokenizer ({config.tokenizer.kind}) has no Hugging Face form; "
        f"{out} gets no tokenizer files")
  path = hf_export.export_model(out, config=lm.config, params=params, tokenizer=lm.tokenizer,
                                chat=lm.chat, hf_config=lm.hf_config,
                                generation_config=lm.generation_config, dtype=dtype)
  log(f"wrote {path} (transformers: AutoModelForCausalLM.from_pretrained({str(path)!r}))")
  if hub_repo is not None and jax.process_index() == 0:
    log(f"pushed to {push_to_hub(path, hub_repo)}")
  return path, chosen


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="the training run's work directory")
  parser.add_argument("--out", required=True, help="the Hugging Face model directory to write")
  parser.add_argument("--step", default="best",
                      help="best (by validation, else the latest) | latest | a step number")
  parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                      help="tensor dtype in the files (default: the params')")
  parser.add_argument("--init-checkpoint", default=None,
                      help="the run's init model, if not at config.init.checkpoint here")
  parser.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                      help="upload the directory to this Hub model repo")
  parser.add_argument("--verbose", action="store_true", help="tracebacks on errors")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    export_run(args.workdir, args.out, step=args.step, dtype=args.dtype,
               init_checkpoint=args.init_checkpoint, hub_repo=args.push_to_hub)
  except run_config.USER_ERRORS as e:
    run_config.fail(e, args.verbose)


if __name__ == "__main__":
  main()
