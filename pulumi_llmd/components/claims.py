"""One owner per name in a program: two components whose children would share URNs fail early.

A Pulumi URN is the stack, the project, the *types* of the resource's parents and its own name, not
the parents' names (https://www.pulumi.com/docs/iac/concepts/resources/names/#urns). The components
name their children from their args (``llmd:name`` gives ``<name>-epp``, ``<name>-decode`` ...; CRD
installs and control-plane charts are named by release), so two ``LlmdStack``s with the same ``name``
(even in two namespaces), or two that both install the cluster's CRDs or the same gateway control
plane, register children under one URN. Pulumi's mock monitor lets that through; the engine stops the
update with "Duplicate resource URN" once the second registers, after the first stack's objects are
already being created, and its message names a URN rather than the key to change.

Each component therefore claims, before it registers anything, the values its child names derive
from, under its parent chain's types (the part of the URN they share). A second claim of the same
value raises a :class:`ConfigError` naming the arg. Claims live as long as the engine connection
(``SETTINGS.monitor``): one ``pulumi up`` or ``preview``, one ``set_mocks`` in tests. A program run
without one (no engine at all) is not checked.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import settings as pulumi_settings

from pulumi_llmd.config.errors import ConfigError, Problem


@dataclass(frozen=True)
class Claim:
    """``value`` (of a kind, e.g. a name prefix) that the arg at ``key`` makes this component use."""

    key: str
    kind: str
    value: str
    why: str


@dataclass
class _Run:
    owners: dict[tuple[tuple[str, ...], str, str], str] = field(default_factory=dict)
    chains: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = field(default_factory=weakref.WeakKeyDictionary)


_RUNS: weakref.WeakKeyDictionary[Any, _Run] = weakref.WeakKeyDictionary()


def _current_run() -> _Run | None:
    monitor = pulumi_settings.SETTINGS.monitor
    if monitor is None:
        return None
    try:
        return _RUNS.setdefault(monitor, _Run())
    except TypeError:  # a monitor that cannot be weakly referenced: do not keep it alive
        return None


def claim(
    component: pulumi.ComponentResource,
    type_: str,
    name: str,
    opts: pulumi.ResourceOptions | None,
    claims: Iterable[Claim],
) -> None:
    """Record ``component``'s claims, or raise a :class:`ConfigError` (subject ``<Component> args``)
    naming each arg whose value another component of the same type, under the same parent types,
    already claimed. Call it after validating the args and before ``super().__init__``."""
    run = _current_run()
    if run is None:
        return
    parent = opts.parent if opts is not None else None
    chain = (*_chain(run, parent), type_)
    short = type_.rsplit(":", 1)[-1]
    wanted = list(claims)
    taken: dict[tuple[str, str], tuple[Claim, list[str]]] = {}  # (key, owner) -> values, in order
    for c in wanted:
        if (owner := run.owners.get((chain, c.kind, c.value))) is not None:
            taken.setdefault((c.key, owner), (c, []))[1].append(f"'{c.value}'")
    problems = [
        Problem(
            key,
            f"{', '.join(values)} already claimed as {c.kind} by {short} '{owner}' in this program: {c.why}",
        )
        for (key, owner), (c, values) in taken.items()
    ]
    if problems:
        raise ConfigError(problems, subject=f"{short} '{name}' args")
    for c in wanted:
        run.owners[(chain, c.kind, c.value)] = name
    run.chains[component] = chain


def _chain(run: _Run, parent: pulumi.Resource | None) -> tuple[str, ...]:
    """The types of ``parent`` and its parents (empty at the stack's root)."""
    if parent is None:
        return ()
    known = run.chains.get(parent)
    if known is not None:
        return known
    # A component of the caller's own: its type, as far as we know (its parents are not recorded).
    return (str(getattr(parent, "_type", type(parent).__name__)),)
