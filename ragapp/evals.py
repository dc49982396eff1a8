"""`ragapp.evals` is the `evals` package (evaluation lives in its own top-level package of this distribution)."""

import sys

import evals

sys.modules[__name__] = evals
