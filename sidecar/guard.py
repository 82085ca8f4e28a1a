"""The sidecar's SSRF guard: which ``x-prefiller-host-port`` targets it will send a prefill to.

The header is set by the EPP, and the gateway strips a client's copy; but anything that can reach a
decode pod directly (another workload in the cluster, a misrouted request) could name any host.
llm-d's routing sidecar guards this by watching the InferencePool's pods (``-enable-ssrf-protection``,
llm-d-routing-sidecar README "SSRF Protection"). This guard offers the same choices without a
Kubernetes client in the sidecar:

* **pod CIDR** (``--prefill-allowlist``): IPs or networks; ``private`` stands for the private
  ranges pod networks use (RFC 1918, RFC 6598 shared space, IPv6 ULA), which already shuts out
  cloud metadata (169.254.169.254), loopback and the internet;
* **pool membership** (``--prefill-pool-dns``): the A/AAAA records of a headless Service that
  selects the prefill pods, i.e. exactly the pool's ready pods, re-resolved as pods come and go;
* **ports** (``--prefill-ports``): the model-server port(s), so an allowed pod's other ports
  (NIXL side channel, metrics, a debugger) are not reachable through the sidecar.

A host passes when it is in the allowlist or in the pool (either one is enough; a check that is not
configured does not pass anything), and its port is allowed. Only IP literals pass: the EPP always
names pods by IP, and resolving a name here would let DNS decide.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# What "private" stands for in --prefill-allowlist.
PRIVATE_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)

Resolver = Callable[[str], Awaitable[set[str]]]


def parse_allowlist(text: str) -> tuple[Network, ...]:
    """``10.0.0.0/8, 192.168.1.7, private`` → networks (a bare IP is a /32 or /128)."""
    networks: list[Network] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item.lower() == "private":
            networks.extend(PRIVATE_NETWORKS)
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"--prefill-allowlist: {item!r} is not an IP address, a CIDR or 'private'"
            ) from exc
    if not networks:
        raise ValueError("--prefill-allowlist is empty")
    return tuple(networks)


def parse_ports(text: str) -> frozenset[int]:
    ports = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not (item.isascii() and item.isdigit()) or not 0 < int(item) < 65536:
            raise ValueError(f"--prefill-ports: {item!r} is not a TCP port")
        ports.add(int(item))
    if not ports:
        raise ValueError("--prefill-ports is empty")
    return frozenset(ports)


async def _resolve(name: str) -> set[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return {str(ipaddress.ip_address(info[4][0])) for info in infos}


@dataclass
class PoolMembership:
    """The IPs behind a DNS name (a headless Service of the prefill pods), kept fresh lazily:
    re-resolved when older than ``ttl_s``, or on a miss at most every ``miss_interval_s`` (a pod
    that just became ready must not wait a whole TTL)."""

    name: str
    ttl_s: float = 5.0
    miss_interval_s: float = 1.0
    # getaddrinfo has no deadline of its own (glibc's resolver can retry for tens of seconds, a
    # stuck one for ever): past this a lookup has failed (the last answer is kept).
    resolve_timeout_s: float = 2.0
    resolver: Resolver = _resolve
    clock: Callable[[], float] = time.monotonic
    _members: set[str] = field(default_factory=set)
    _resolved_at: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def contains(self, address: Address) -> bool:
        text = str(address)
        now = self.clock()
        stale = self._resolved_at is None or now - self._resolved_at >= self.ttl_s
        missed = text not in self._members and (
            self._resolved_at is None or now - self._resolved_at >= self.miss_interval_s
        )
        if stale or missed:
            await self._refresh(self._resolved_at)
        return text in self._members

    async def _refresh(self, seen: float | None) -> None:
        """Resolve again unless another request did while this one waited for the lock
        (``seen``: the lookup time it judged stale): every request that found the answer stale
        used to queue here and resolve in turn, so the last of N waited N lookups."""
        async with self._lock:
            if self._resolved_at != seen:
                return
            try:
                async with asyncio.timeout(self.resolve_timeout_s):
                    self._members = await self.resolver(self.name)
            except TimeoutError:  # before OSError, of which it is a subclass
                log.warning("resolving the prefill pool %s took over %g s", self.name, self.resolve_timeout_s)
            except OSError as exc:  # socket.gaierror included: keep the last answer, retry later
                log.warning("resolving the prefill pool %s failed: %s", self.name, exc)
            self._resolved_at = self.clock()


@dataclass
class PrefillGuard:
    allowlist: Sequence[Network] = ()
    pool: PoolMembership | None = None
    ports: frozenset[int] | None = None  # None: any port

    async def allows(self, host: str, port: int) -> str | None:
        """None when the target is allowed, otherwise why not (for the 403 and the log)."""
        if self.ports is not None and port not in self.ports:
            return f"port {port} is not a model-server port ({', '.join(map(str, sorted(self.ports)))})"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return f"{host} is not an IP address"
        if any(address in network for network in self.allowlist):
            return None
        if self.pool is not None and await self.pool.contains(address):
            return None
        return f"{host} is not an allowed prefill host"
