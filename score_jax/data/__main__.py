"""Entry point: `python -m score_jax.data prepare NAME --out DIR [--from PATH] [--force]`
(see `score_jax.data.prepare`)."""

import sys

from score_jax.data import prepare

sys.exit(prepare.main())
