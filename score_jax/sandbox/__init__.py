"""The code sandbox: untrusted (model-written) programs run under bubblewrap.

  result = score_jax.sandbox.run_tests(program, ["assert add(1, 2) == 3"], timeout_s=5)

`pool` runs programs (the public API below), `bwrap` builds the isolation and `driver` is
what runs inside it. Tests never run there: `judge` keeps one trusted `verifier` process
per pool slot that runs the test code (prepared by `testcode`) and calls the program's
functions in the sandbox, exchanging plain data only (`codec`); the verdict is its own.
"""

from score_jax.sandbox.pool import (ExecResult, Limits, SandboxPool, SandboxUnavailableError,
                                    default_pool, run, run_tests)

__all__ = ["ExecResult", "Limits", "SandboxPool", "SandboxUnavailableError", "default_pool",
           "run", "run_tests"]
