"""The shared kernel and bad-input suites of tests/, on the cuda backend."""
from tests.bad_input_suite import *  # noqa: F403
from tests.kernel_suite import *  # noqa: F403
