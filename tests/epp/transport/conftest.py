from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import wrappers_pb2

from .support import ECHO, TRANSPORTS, Probe, ServedMethod, ServerUnderTest, echo_handler, make_certificate


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def server(transport: str, probe: Probe) -> AsyncIterator[ServerUnderTest]:
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(probe))
    async with ServerUnderTest(transport, [method]) as running:
        yield running


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))
