"""Pooled clients in front of vLLM must not outlive its HTTP keep-alive.

uvicorn (vLLM's server) closes an idle connection after ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE`` seconds
(5 by default). The P/D sidecar keeps idle connections for aiohttp's default 15 s, to the prefill
pods *and* to the decode pod's own vLLM; when the server closes a connection the sidecar is just
reusing, the request fails (on the decode leg: a 502 to the client, with no retry). So every vLLM
the sidecar talks to must keep connections open longer than the sidecar does.
"""

from __future__ import annotations

import pytest

from pulumi_llmd.components.modelserver import Role, engine_container
from pulumi_llmd.components.platform import PodNetworking
from pulumi_llmd.config import parse_stack_config
from tests.support.stacks import kind_config, model_server_spec

SIDECAR_IDLE_KEEPALIVE_S = 15  # aiohttp.TCPConnector's default keepalive_timeout
VLLM_MODEL = {"name": "tiny", "uri": "hf://org/tiny", "engine": "vllm"}


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_pd_engines_keep_connections_longer_than_the_sidecar(role: Role) -> None:
    config = parse_stack_config(kind_config(model=VLLM_MODEL), has_hf_token=True)
    assert config.disaggregated
    engine = engine_container(model_server_spec(config, role, PodNetworking()), leader=True)
    env = {e["name"]: e.get("value") for e in engine["env"]}
    assert int(env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) > SIDECAR_IDLE_KEEPALIVE_S
