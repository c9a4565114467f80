from __future__ import annotations

import pytest

pytest.importorskip("cryptography")

from support.fleet import OriginServer, Site, close_all, make_trust
from support.seaweed import seaweedfs  # the real S3 store (session-scoped), for the seaweedfs-marked tests

__all__ = ["seaweedfs"]


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(tmp_path / "site")


@pytest.fixture
def trust():
    return make_trust()


@pytest.fixture
def origin(site):
    server = OriginServer(site.www)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _close_pullers():
    yield
    close_all()
