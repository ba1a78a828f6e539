"""Where `score_jax.load(path)` reads from: a local path, or a Hugging Face Hub id.

  resolve("path/to/dir")            -> Path(path/to/dir)     (an existing path, used as is)
  resolve("google/gemma-3-270m-it") -> the snapshot in the HF cache (downloaded when online)

A string that is not an existing path is a Hub id when it looks like one (`is_hub_id`):
exactly one '/', no leading '.', '/' or '~', no `.gguf` suffix, each part made of
[A-Za-z0-9_.-] without '--' or '..' (huggingface_hub's repo-id rules); a
`pathlib.Path` is always a local path. It is fetched
with `huggingface_hub.snapshot_download`, restricted to `ALLOW_PATTERNS` (config,
safetensors, tokenizer and generation config files). With HF_HUB_OFFLINE=1, or when
the Hub cannot be reached, only the local cache is read (`local_files_only=True`); the
cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub, read when
`resolve` is called. Every failure is one exception with a one-line message naming
the path or id and the fix:

* a path that does not exist (./foo, /abs/x, ~/x, model.gguf, a/b/c): FileNotFoundError;
* a Hub id, offline and not cached: FileNotFoundError "<id> is not a local path and is
  not in the Hugging Face cache (<cache>); download it with hf download <id> ...";
* a Hub id without huggingface_hub installed: ImportError naming `pip install`;
* a Hub id the Hub does not know (or gated, without a token): FileNotFoundError /
  PermissionError naming the id.
"""

from __future__ import annotations

import os
import pathlib
import re

ALLOW_PATTERNS = ("config.json", "generation_config.json", "*.safetensors",
                  "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                  "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
                  "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
_PART = re.compile(r"^[A-Za-z0-9_.-]{1,96}$")
_TRUE = ("1", "ON", "YES", "TRUE")
KINDS = ("a Hugging Face model directory (config.json + *.safetensors), a .gguf file, a "
         "Gemma Orbax checkpoint directory, or a Hugging Face Hub id such as "
         "google/gemma-3-270m-it")


def is_hub_id(text: str) -> bool:
  """Whether `text` is shaped like a Hub model id "org/name" (see the module docstring)."""
  if text.startswith((".", "/", "~")) or text.count("/") != 1 or text.endswith(".gguf"):
    return False
  return all(_PART.match(part) and "--" not in part and ".." not in part
             and not part.startswith(("-", ".")) and not part.endswith(("-", "."))
             for part in text.split("/"))


def cache_dir() -> pathlib.Path:
  """The Hugging Face Hub cache, from the environment at call time."""
  explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
  if explicit:
    return pathlib.Path(explicit).expanduser()
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
  return pathlib.Path(home).expanduser() / "hub"


def offline() -> bool:
  """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set."""
  return any(os.environ.get(k, "").upper() in _TRUE
             for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _not_cached(repo_id: str, cache: pathlib.Path) -> FileNotFoundError:
  return FileNotFoundError(
      f"{repo_id} is not a local path and is not in the Hugging Face cache ({cache}); "
      f"download it with hf download {repo_id} (older huggingface_hub: huggingface-cli "
      f"download {repo_id}) or pass a local directory")


def download(repo_id: str) -> pathlib.Path:
  """The local snapshot directory of Hub model `repo_id` (see the module docstring)."""
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
    from huggingface_hub import errors  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"{repo_id} is not a local path; loading it from the Hugging Face Hub "
                      f"needs huggingface_hub (pip install huggingface_hub), or pass a local "
                      f"directory") from e
  cache = cache_dir()
  kwargs = dict(cache_dir=str(cache), allow_patterns=list(ALLOW_PATTERNS))
  if not offline():
    try:
      return pathlib.Path(huggingface_hub.snapshot_download(repo_id, **kwargs))
    except errors.GatedRepoError as e:
      raise PermissionError(f"{repo_id} is a gated model on the Hugging Face Hub: accept its "
                            f"license on huggingface.co/{repo_id} and log in with hf auth "
                            f"login (or set HF_TOKEN)") from e
    except errors.RepositoryNotFoundError as e:
      raise FileNotFoundError(f"{repo_id} is not a local path and not a model on the Hugging "
                              f"Face Hub (or it is private: log in with hf auth login); "
                              f"check the id or pass a local directory") from e
    except Exception:  # pylint: disable=broad-except
      pass             # no network (or a Hub error): fall back to the cache below
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True,
                                                          **kwargs))
  except Exception as e:  # pylint: disable=broad-except
    raise _not_cached(repo_id, cache) from e


def resolve(path: str | os.PathLike) -> pathlib.Path:
  """A local path to load from: `path` itself when it exists, else the Hub snapshot of
  the id `path`; FileNotFoundError naming `path` and the fix otherwise."""
  text = os.fspath(path)
  p = pathlib.Path(text).expanduser()
  if p.exists():
    return p
  if not isinstance(path, pathlib.Path) and is_hub_id(text):
    return download(text)
  raise FileNotFoundError(f"checkpoint path {p.absolute()} does not exist; pass {KINDS}")
