"""``./dev demo``: the project's main job on loopback, with a simulated prefill/decode pool.

One command starts Envoy, the bundled EPP and simulated vLLM pods (decode pods behind the P/D
sidecar), sends a short mixed workload, prints where each request went and the TTFT summary, and
stops everything it started. ``--keep-running`` leaves the stack up for manual ``curl``.
"""
