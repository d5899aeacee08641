"""Shared test configuration."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Hermetic tuning lookups: kernels' config=None and schedule lookups consult the tuning
# database, which must never be the user's own. Removed when the (worker) process exits.
_DB_DIR = tempfile.mkdtemp(prefix="jaxsched-test-db-")
atexit.register(shutil.rmtree, _DB_DIR, ignore_errors=True)
os.environ["JAXSCHED_TUNING_DB"] = os.path.join(_DB_DIR, "tuning.db")

import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Float64 references are computed with numpy; JAX stays in its default 32-bit mode.
settings.register_profile(
  "ci",
  max_examples=15,
  deadline=None,
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
  derandomize=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

jax.config.update("jax_enable_x64", False)
