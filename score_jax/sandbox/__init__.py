"""The code sandbox: untrusted (model-written) programs run under bubblewrap.

  result = score_jax.sandbox.run_tests(program, ["assert add(1, 2) == 3"], timeout_s=5)

`pool` runs programs (the public API below), `bwrap` builds the isolation, `asserts`
rewrites the tests' asserts on the host and `driver` is what runs inside the sandbox.
"""

from score_jax.sandbox.pool import (ExecResult, Limits, SandboxPool, SandboxUnavailableError,
                                    default_pool, run, run_tests)

__all__ = ["ExecResult", "Limits", "SandboxPool", "SandboxUnavailableError", "default_pool",
           "run", "run_tests"]
