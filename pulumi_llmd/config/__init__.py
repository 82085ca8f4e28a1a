"""Typed, validated stack configuration (Pulumi namespace ``llmd``)."""

from pulumi_llmd.config.errors import ConfigError, Problem
from pulumi_llmd.config.loader import LoadedConfig, load_stack_config, parse_stack_config
from pulumi_llmd.config.models import (
    Engine,
    FailureMode,
    LlmdStackConfig,
    PlatformName,
    StackConfig,
)

__all__ = [
    "ConfigError",
    "Engine",
    "FailureMode",
    "LlmdStackConfig",
    "LoadedConfig",
    "PlatformName",
    "Problem",
    "StackConfig",
    "load_stack_config",
    "parse_stack_config",
]
