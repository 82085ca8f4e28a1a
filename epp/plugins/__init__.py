"""Built-in scheduler plugins; importing this package registers them all by llm-d type name."""

from epp.plugins import datalayer, filters, parsers, pickers, prefix, profile_handlers, saturation, scorers
from epp.plugins.registry import create, known_types, register

__all__ = [
    "create",
    "datalayer",
    "filters",
    "known_types",
    "parsers",
    "pickers",
    "prefix",
    "profile_handlers",
    "register",
    "saturation",
    "scorers",
]
