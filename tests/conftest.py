import datetime

import pytest


@pytest.fixture
def q(litejobs_queue):
    """The plugin's queue, under a short name."""
    return litejobs_queue


@pytest.fixture
def now():
    """A clock reading one second ahead, so jobs the test puts right away are due."""
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
