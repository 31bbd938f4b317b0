"""Fixtures that tests in every folder can use. Shared helper functions are in tests/helpers.py."""

import signal

import pytest

from tests.docs.conftest import MISSING, collect_ignore as DOCS_NOT_COLLECTED


@pytest.fixture
def deadline():
    """deadline(seconds): fail the test (TimeoutError) if it is still running then; a read that
    blocks on a FIFO is interrupted by the alarm."""

    def expire(*_):
        raise TimeoutError("still running at the deadline: the reader blocked")

    old = signal.signal(signal.SIGALRM, expire)
    yield lambda seconds: signal.alarm(seconds)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def pytest_report_header(config):
    """Say so when the documentation site's tests are not collected (tests/docs/conftest.py)."""
    if DOCS_NOT_COLLECTED:
        return (f"tests/docs: not collected, the docs extra is not installed ({', '.join(MISSING)}): "
                f"pip install -c constraints.txt '.[docs]'")
    return None
