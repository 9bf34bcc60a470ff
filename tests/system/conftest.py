"""The system tier: a session stack of its own whose dead workers' jobs come back in 30 s (the
least the settings allow), for the tests that kill processes and cut the store off."""

from stacks import use_stack_environment

use_stack_environment(MEDINDEX_VISIBILITY_TIMEOUT_S="30")

from jobs import medium, small, store, tracker  # noqa: E402, F401
from stacks import _clean_test_home, base_env, ingested, stack, tiny_model  # noqa: E402, F401
