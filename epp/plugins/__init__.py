"""Built-in scheduler plugins; importing this package registers them all by llm-d type name
(the registry itself belongs to the framework: :mod:`epp.scheduling.registry`), the flow-control
policies of :mod:`epp.flowcontrol` included."""

import epp.flowcontrol  # noqa: F401 - registers the flow-control policy plugins
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
    unsupported,
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
    "unsupported",
]
