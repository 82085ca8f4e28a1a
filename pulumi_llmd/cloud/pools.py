"""Checks that the model-server pools fit the GPU machines a cloud stack provisions.

The per-key models cannot see both sides (pool sizes live in the spine's config, machine facts in
the cloud sections), so these run when a cloud platform is provisioned, before any resource is
registered, and fail with the spine's ConfigError naming the pool key.
"""

from __future__ import annotations

from pulumi_llmd.config.errors import ConfigError, Problem
from pulumi_llmd.config.models import Engine, PoolConfig, StackConfig


def serving_pools(config: StackConfig) -> list[tuple[str, PoolConfig]]:
    """The pools that will run on GPU nodes (simulated models' pods need none), with their config key."""
    pools: list[tuple[str, PoolConfig]] = []
    for model in config.served():
        if model.model.engine is Engine.SIMULATOR:
            continue  # simulator pods request no GPUs and need no fabric
        if model.prefill.enabled:
            pools.append((model.section_key("prefill"), model.prefill))
        pools.append((model.section_key("decode"), model.decode))
    return pools


def check_gpus_per_pod(
    config: StackConfig, machine: str, gpus_per_node: int, *, whole_node: bool, reason: str = ""
) -> None:
    """Each pod's accelerators must fit one node; with `whole_node` they must be all of them."""
    problems: list[Problem] = []
    for key, pool in serving_pools(config):
        wanted = pool.accelerators_per_pod()
        if wanted > gpus_per_node:
            problems.append(
                Problem(
                    f"{key}.tensorParallel",
                    f"asks for {wanted} GPUs per pod but {machine} has {gpus_per_node}; "
                    f"use nodesPerReplica to span nodes",
                )
            )
        elif whole_node and wanted != gpus_per_node:
            problems.append(
                Problem(
                    f"{key}.tensorParallel",
                    f"asks for {wanted} GPUs per pod, but each pod on {machine} must take all "
                    f"{gpus_per_node} ({reason})",
                )
            )
    if problems:
        raise ConfigError(problems)
