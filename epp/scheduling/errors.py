"""The single error type for a configuration the EPP refuses to start with."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad EndpointPickerConfig, endpoints file or runtime option. The message names the
    plugin and/or key at fault, so an operator can fix the YAML without reading code."""
