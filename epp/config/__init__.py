"""EndpointPickerConfig loading (``epp.config.loader``) and its error type."""

from epp.config.errors import ConfigError

__all__ = ["ConfigError"]
