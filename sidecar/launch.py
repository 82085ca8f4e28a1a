"""The command line that runs the P/D sidecar as a local process (demo, end-to-end and slow tests).

On a cluster the sidecar is a container whose arguments the ``components`` package renders; on one
machine it runs next to a simulated or real vLLM on 127.0.0.1, speaking llm-d's ``nixlv2`` protocol.
"""

from __future__ import annotations

import sys


def sidecar_command(port: int, model_server_port: int, *extra: str) -> list[str]:
    """``python -m sidecar`` listening on 127.0.0.1:``port`` in front of the vLLM on
    ``model_server_port``; ``extra`` adds further flags (``--metrics-port``, ``--log-level`` ...)."""
    return [
        sys.executable,
        "-m",
        "sidecar",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model-server-port",
        str(model_server_port),
        "--kv-connector",
        "nixlv2",
        *extra,
    ]
