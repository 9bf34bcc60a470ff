"""The integration tier: one session stack, shared by every test (tests/stacks.py)."""

from stacks import use_stack_environment

use_stack_environment()

from jobs import medium, small, store, tracker  # noqa: E402, F401
from stacks import _clean_test_home, base_env, ingested, stack, tiny_model  # noqa: E402, F401
