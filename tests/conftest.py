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


@pytest.fixture
def cli_pools(tmp_path):
    """Start ``python -m litejobs worker`` pools (`hostile_jobs.CliPools`);
    every one still running is killed at the end of the test."""
    from hostile_jobs import CliPools

    pools = CliPools(tmp_path)
    try:
        yield pools
    finally:
        still = pools.kill_all()
        assert not still, f"pools still running after SIGKILL: {still}"
