"""Built-in scheduler plugins; importing this package registers them all by llm-d type name
(the registry itself belongs to the framework: :mod:`epp.scheduling.registry`)."""

from epp.plugins import (
    datalayer,
    filters,
    parsers,
    pickers,
    precise,
    prefix,
    profile_handlers,
    saturation,
    scorers,
    tokens,
)

__all__ = [
    "datalayer",
    "filters",
    "parsers",
    "pickers",
    "precise",
    "prefix",
    "profile_handlers",
    "saturation",
    "scorers",
    "tokens",
]
