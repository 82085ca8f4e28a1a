from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from epp.metrics import ServerMetrics
from tests.support.extproc import ScriptedDirector


@pytest.fixture
def director() -> ScriptedDirector:
    return ScriptedDirector()


@pytest.fixture
def metrics() -> ServerMetrics:
    return ServerMetrics(CollectorRegistry())
