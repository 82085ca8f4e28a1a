from __future__ import annotations

import pytest
from extproc_fakes import ScriptedDirector
from prometheus_client import CollectorRegistry

from epp.server.metrics import ServerMetrics


@pytest.fixture
def director() -> ScriptedDirector:
    return ScriptedDirector()


@pytest.fixture
def metrics() -> ServerMetrics:
    return ServerMetrics(CollectorRegistry())
