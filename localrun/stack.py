"""Command lines and files for running ``python -m epp`` locally against static endpoints."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LocalEndpoint:
    """One model server as the static endpoints file describes it."""

    name: str
    port: int
    address: str = "127.0.0.1"
    metrics_port: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def hostport(self) -> str:
        return f"{self.address}:{self.port}"


def write_endpoints_file(
    path: Path, endpoints: Sequence[LocalEndpoint], objectives: Mapping[str, int] | None = None
) -> Path:
    """Write the ``--endpoints-file`` document (JSON, which the YAML reader accepts too), with
    InferenceObjective priorities by name if given."""
    document: dict[str, object] = {
        "endpoints": [
            {
                "name": e.name,
                "address": e.address,
                "port": e.port,
                **({"metricsPort": e.metrics_port} if e.metrics_port is not None else {}),
                "labels": dict(e.labels),
            }
            for e in endpoints
        ]
    }
    if objectives:
        document["objectives"] = [{"name": name, "priority": p} for name, p in objectives.items()]
    path.write_text(json.dumps(document, indent=1))
    return path


def epp_command(
    endpoints_file: Path,
    grpc_port: int,
    health_port: int,
    metrics_port: int,
    *extra: str,
    drain_timeout: float = 0.0,
    drain_notice: float = 0.0,
) -> list[str]:
    """``python -m epp`` on loopback with a static endpoints file. ``drain_timeout`` and
    ``drain_notice`` default to 0 so a local stop is immediate; pass ``--config-text``/
    ``--config-file`` etc. in ``extra``."""
    return [
        sys.executable,
        "-m",
        "epp",
        "--endpoints-file",
        str(endpoints_file),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--grpc-health-port",
        str(health_port),
        "--metrics-port",
        str(metrics_port),
        "--drain-timeout",
        f"{drain_timeout:g}",
        "--drain-notice",
        f"{drain_notice:g}",
        *extra,
    ]
