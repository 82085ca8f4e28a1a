"""The decode-side P/D sidecar (``python -m epp.sidecar``), llm-d's routing sidecar in Python.

It listens in front of the local vLLM. A request without ``x-prefiller-host-port`` is proxied
unchanged. A completions/chat request with it runs in two phases: a one-token, non-streaming prefill
on the named prefill pod (which keeps the KV for us), then the original request on the local vLLM
with the ``kv_transfer_params`` the prefill returned, so vLLM pulls the KV over NIXL instead of
recomputing it. See :mod:`epp.sidecar.pd` for the request rewriting and :mod:`epp.sidecar.proxy`
for the HTTP side.
"""
