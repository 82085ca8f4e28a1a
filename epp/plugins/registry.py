"""Plugin registry: llm-d ``type`` string → factory.

A plugin class registers itself with ``@register("queue-scorer")`` and implements
``from_parameters(name, params)``. Importing :mod:`epp.plugins` registers every built-in plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from epp.config.errors import ConfigError
from epp.config.params import Params
from epp.scheduling.framework import Plugin


class PluginFactory(Protocol):
    def __call__(self, name: str, params: Params) -> Plugin: ...


_FACTORIES: dict[str, PluginFactory] = {}
_DEPRECATED: dict[str, str] = {}  # old type → the type that replaces it

P = TypeVar("P", bound=type[Plugin])


def register(type_name: str, *, deprecated_aliases: tuple[str, ...] = ()) -> Callable[[P], P]:
    def decorate(cls: P) -> P:
        factory: PluginFactory | None = getattr(cls, "from_parameters", None)
        if factory is None:
            raise TypeError(f"{cls.__name__} has no from_parameters classmethod")
        for alias in (type_name, *deprecated_aliases):
            if alias in _FACTORIES:
                raise TypeError(f"plugin type {alias!r} registered twice")
            _FACTORIES[alias] = factory
        for alias in deprecated_aliases:
            _DEPRECATED[alias] = type_name
        cls.type_name = type_name
        return cls

    return decorate


def create(
    type_name: str, name: str, raw_parameters: object, on_unknown: Callable[[str], None] | None = None
) -> Plugin:
    """Build one plugin. Unknown parameter keys raise ConfigError, or go to ``on_unknown``."""
    factory = _FACTORIES.get(type_name)
    if factory is None:
        raise ConfigError(
            f"plugin {name!r}: unknown type {type_name!r} (known types: {', '.join(sorted(_FACTORIES))})"
        )
    params = Params(name, type_name, raw_parameters)
    plugin = factory(name, params)
    params.finish(on_unknown)
    return plugin


def deprecated_replacement(type_name: str) -> str | None:
    return _DEPRECATED.get(type_name)


def known_types() -> list[str]:
    return sorted(_FACTORIES)
