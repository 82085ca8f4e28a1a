"""Plugin registry: llm-d ``type`` string → factory, and the default producer of each data key.

A plugin class registers itself with ``@register("queue-scorer")`` and implements
``from_parameters(name, params)``. Importing :mod:`epp.plugins` registers every built-in plugin;
the framework and the config loader know no plugin by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import Plugin
from epp.scheduling.params import Params


class PluginFactory(Protocol):
    def __call__(self, name: str, params: Params) -> Plugin: ...


_FACTORIES: dict[str, PluginFactory] = {}
_CLASSES: dict[str, type[Plugin]] = {}
_DEPRECATED: dict[str, str] = {}  # old type → the type that replaces it
_DEFAULT_PRODUCERS: dict[str, str] = {}  # data key → plugin type added when nothing produces it
_UNSUPPORTED: dict[str, str] = {}  # llm-d type not implemented here → why, or what to use instead

P = TypeVar("P", bound=type[Plugin])


def register(
    type_name: str, *, deprecated_aliases: tuple[str, ...] = (), default_producer: bool = False
) -> Callable[[P], P]:
    """``default_producer=True``: this type is what the loader adds for each key in its
    ``produces`` that a configured plugin consumes and no configured plugin produces (llm-d's
    default producers, e.g. the approximate prefix producer for ``prefix-cache-scorer``)."""

    def decorate(cls: P) -> P:
        factory: PluginFactory | None = getattr(cls, "from_parameters", None)
        if factory is None:
            raise TypeError(f"{cls.__name__} has no from_parameters classmethod")
        if default_producer:
            if not cls.produces:
                raise TypeError(f"{cls.__name__} is a default producer but produces no data key")
            for key in cls.produces:
                if key in _DEFAULT_PRODUCERS:
                    raise TypeError(f"data key {key!r} has two default producers")
                _DEFAULT_PRODUCERS[key] = type_name
        for alias in (type_name, *deprecated_aliases):
            if alias in _FACTORIES:
                raise TypeError(f"plugin type {alias!r} registered twice")
            if alias in _UNSUPPORTED:
                raise TypeError(f"plugin type {alias!r} is listed as unsupported: drop it from that list")
            _FACTORIES[alias] = factory
            _CLASSES[alias] = cls
        for alias in deprecated_aliases:
            _DEPRECATED[alias] = type_name
        cls.type_name = type_name
        return cls

    return decorate


def create(type_name: str, name: str, raw_parameters: object) -> Plugin:
    """Build one plugin. Unknown parameter keys raise ConfigError, as llm-d-router's StrictDecoder."""
    factory = _FACTORIES.get(type_name)
    if factory is None and type_name in _UNSUPPORTED:
        raise ConfigError(
            f"plugin {name!r}: type {type_name!r} is an llm-d plugin this EPP does not implement "
            f"({_UNSUPPORTED[type_name]}); docs/plugins.md lists the unsupported types"
        )
    if factory is None:
        raise ConfigError(
            f"plugin {name!r}: unknown type {type_name!r} (known types: {', '.join(sorted(_FACTORIES))})"
        )
    params = Params(name, type_name, raw_parameters)
    plugin = factory(name, params)
    params.finish()
    return plugin


def register_unsupported(types: dict[str, str]) -> None:
    """Record llm-d plugin types that are not implemented, each with why (or what to use instead),
    so a config naming one gets that answer instead of an unknown-type error."""
    for type_name in types:
        if type_name in _FACTORIES:
            raise TypeError(f"plugin type {type_name!r} is registered and listed as unsupported")
    _UNSUPPORTED.update(types)


def is_llm_d_type(type_name: str) -> bool:
    """Registered here, or an llm-d type listed as not implemented (creating it says why)."""
    return type_name in _FACTORIES or type_name in _UNSUPPORTED


def unsupported_types() -> dict[str, str]:
    return dict(sorted(_UNSUPPORTED.items()))


def deprecated_replacement(type_name: str) -> str | None:
    return _DEPRECATED.get(type_name)


def default_producer(key: str) -> str | None:
    """The plugin type registered to produce ``key`` when a config has no producer for it."""
    return _DEFAULT_PRODUCERS.get(key)


def plugin_class(type_name: str) -> type[Plugin]:
    """The class registered under ``type_name`` (for documentation and tests)."""
    return _CLASSES[type_name]


def known_types() -> list[str]:
    return sorted(_FACTORIES)
