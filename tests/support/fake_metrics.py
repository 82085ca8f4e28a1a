"""In-process fake vLLM /metrics servers on 127.0.0.1 (shared by tests and benchmarks)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from aiohttp import web


def vllm_metrics_page(
    *,
    waiting: float = 0,
    running: float = 0,
    kv: float = 0.0,
    model: str = "m",
    loras: tuple[str, ...] = (),
    max_lora: int = 0,
    histogram_buckets: int = 30,
) -> str:
    """A page shaped like vLLM's: HELP/TYPE lines, the gauges we read, and histogram families
    (which dominate a real page's size) whose names share prefixes with the ones we read."""
    lines = []
    labels = f'engine="0",model_name="{model}"'

    def gauge(name: str, value: float, extra: str = "") -> None:
        lines.append(f"# HELP {name} {name} help text.")
        lines.append(f"# TYPE {name} gauge")
        lines.append(f"{name}{{{labels}{extra}}} {value}")

    gauge("vllm:num_requests_running", running)
    gauge("vllm:num_requests_waiting", waiting)
    lines.append(f'vllm:num_requests_waiting_by_reason{{{labels},reason="capacity"}} 7.0')
    gauge("vllm:kv_cache_usage_perc", kv)
    gauge("vllm:lora_requests_info", 1.7e9, "")
    lines[-1] = (
        f'vllm:lora_requests_info{{max_lora="{max_lora}",running_lora_adapters="{",".join(loras)}",'
        f'waiting_lora_adapters=""}} 1.7e9'
    )
    lines.append(f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="2048",{labels}}} 1.0')
    for family in (
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:time_per_output_token_seconds",
        "vllm:request_queue_time_seconds",
    ):
        lines.append(f"# HELP {family} histogram.")
        lines.append(f"# TYPE {family} histogram")
        for i in range(histogram_buckets):
            lines.append(f'{family}_bucket{{{labels},le="{0.001 * 2**i:.6g}"}} {i * 3}.0')
        lines.append(f'{family}_bucket{{{labels},le="+Inf"}} {histogram_buckets * 3}.0')
        lines.append(f"{family}_count{{{labels}}} {histogram_buckets * 3}.0")
        lines.append(f"{family}_sum{{{labels}}} 12.5")
    for counter in (
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_hits_total",
    ):
        lines.append(f"# TYPE {counter} counter")
        lines.append(f"{counter}{{{labels}}} 12345.0")
    return "\n".join(lines) + "\n"


def filter_page(page: str, names: list[str]) -> str:
    """What prometheus_client's exposition renders for ``?name[]=...``: the named families only
    (their HELP/TYPE lines and the samples of exactly those names; the families read here are
    gauges, whose one sample name is the family's)."""
    wanted = set(names)
    kept = []
    for line in page.splitlines():
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[2] in wanted:
                kept.append(line)
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            kept.append(line)
    return "\n".join(kept) + "\n" if kept else ""


@dataclass
class FakeMetricsServer:
    """One fake pod: serves ``page`` (or ``status``) at /metrics and counts hits.

    With ``filtering`` it also serves ``/metrics/`` as vLLM does (prometheus_client's ASGI app:
    ``name[]`` query parameters select families), while ``/metrics`` ignores any query (vLLM's
    instrumentator route). ``paths`` records every request's path and query, in order."""

    page: str = field(default_factory=vllm_metrics_page)
    # Served (and used up) one per /metrics request before ``page``: a page that changes between GETs.
    first_pages: list[str] = field(default_factory=list)
    status: int = 200
    hits: int = 0
    port: int = 0
    filtering: bool = False
    # Names the filtered page drops even when asked for (a server whose registry does not find them).
    unfilterable: frozenset[str] = frozenset()
    filtered_status: int = 200
    paths: list[str] = field(default_factory=list)
    ssl_context: ssl.SSLContext | None = None  # serve HTTPS
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        if self.filtering:
            app.router.add_get("/metrics/", self._filtered)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.paths.append(request.path_qs)
        if self.status != 200:
            return web.Response(status=self.status, text="boom")
        page = self.first_pages.pop(0) if self.first_pages else self.page
        return web.Response(text=page, content_type="text/plain")

    async def _filtered(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.paths.append(request.path_qs)
        status = self.status if self.status != 200 else self.filtered_status
        if status != 200:
            return web.Response(status=status, text="boom")
        names = request.query.getall("name[]", [])
        if not names:
            return web.Response(text=self.page, content_type="text/plain")
        page = filter_page(self.page, [n for n in names if n not in self.unfilterable])
        return web.Response(text=page, content_type="text/plain")
