from tests.jobs.conftest import workers  # noqa: F401  (real runworker processes)
