"""Typed, validated stack configuration (Pulumi namespace ``llmd``)."""

from components.config.errors import ConfigError, Problem
from components.config.loader import LoadedConfig, load_stack_config, parse_stack_config
from components.config.models import (
    Engine,
    FailureMode,
    PlatformName,
    StackConfig,
)

__all__ = [
    "ConfigError",
    "Engine",
    "FailureMode",
    "LoadedConfig",
    "PlatformName",
    "Problem",
    "StackConfig",
    "load_stack_config",
    "parse_stack_config",
]
