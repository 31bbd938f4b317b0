"""Fixtures that tests in every folder can use. Shared helper functions are in tests/helpers.py."""

import signal

import pytest


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
