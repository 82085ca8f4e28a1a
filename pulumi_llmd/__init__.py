"""pulumi-llmd: llm-d-style LLM inference on Kubernetes as Pulumi components.

The public API, for Pulumi programs that bring their own cluster::

    from pulumi_llmd import LlmdStack, LlmdStackArgs, parse_stack_config

``LlmdStackArgs`` has the keys of the ``llmd:`` stack config (snake_case or camelCase) plus
``pod_networking`` and ``hf_token``; pass the Kubernetes provider in the resource options. The same
components are a Pulumi component package for other languages (``pulumi package add``; see
:mod:`pulumi_llmd.package`).

Layers (each imports only the ones below it): ``config`` (the validated stack model; defaults live
there) and ``catalog`` (sourced machine data) → ``components`` (Kubernetes ComponentResources:
CRDs, gateway, endpoint picker, model-server pools, network policies, on-prem operators, and
``LlmdStack`` composing them) → ``cloud`` (GKE/EKS GPU capacity) → ``provision`` (a platform per
stack) → ``program`` (what ``pulumi up`` runs).
"""

from pulumi_llmd.components.args import LlmdStackArgs
from pulumi_llmd.components.platform import Platform, PodNetworking
from pulumi_llmd.components.stack import LlmdStack, llmd_stack_args
from pulumi_llmd.config import ConfigError, LlmdStackConfig, StackConfig, parse_stack_config

__all__ = [
    "ConfigError",
    "LlmdStack",
    "LlmdStackArgs",
    "LlmdStackConfig",
    "Platform",
    "PodNetworking",
    "StackConfig",
    "llmd_stack_args",
    "parse_stack_config",
]
