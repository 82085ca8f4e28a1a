"""pulumi-llmd: llm-d-style LLM inference on Kubernetes as Pulumi components.

The public API, for Pulumi programs that bring their own cluster::

    from pulumi_llmd import LlmdStack, LlmdStackArgs, parse_stack_config

Layers (each imports only the ones below it): ``config`` (the validated stack model; defaults live
there) and ``catalog`` (sourced machine data) → ``components`` (Kubernetes ComponentResources:
CRDs, gateway, endpoint picker, model-server pools, network policies, on-prem operators, and
``LlmdStack`` composing them) → ``cloud`` (GKE/EKS GPU capacity) → ``provision`` (a platform per
stack) → ``program`` (what ``pulumi up`` runs).
"""

from pulumi_llmd.components.platform import Platform, PodNetworking
from pulumi_llmd.components.stack import LlmdStack, LlmdStackArgs
from pulumi_llmd.config import ConfigError, StackConfig, parse_stack_config

__all__ = [
    "ConfigError",
    "LlmdStack",
    "LlmdStackArgs",
    "Platform",
    "PodNetworking",
    "StackConfig",
    "parse_stack_config",
]
