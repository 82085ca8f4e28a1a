"""The decode-side P/D sidecar (``python -m sidecar``), llm-d's routing sidecar in Python.

It listens in front of the local vLLM. A request without ``x-prefiller-host-port`` is proxied
unchanged. A completions/chat request with it runs in two phases: a one-token, non-streaming prefill
on the named prefill pod (which keeps the KV for us), then the original request on the local vLLM
with the ``kv_transfer_params`` the prefill returned, so vLLM pulls the KV over NIXL instead of
recomputing it. A failed prefill (error status, timeout, refused connection, no
``kv_transfer_params``) or a decode that answers 5xx because it could not load the remote KV is
turned into a local prefill, logged and counted in ``llmd_sidecar_prefill_fallbacks_total{reason}``.
See :mod:`sidecar.pd` for the request rewriting and :mod:`sidecar.proxy` for the HTTP side.

NixlConnector on CPU: the "~30 s stall" of the decode leg
---------------------------------------------------------
Measured on the 2-core reference machine with two vLLM 0.32.0 CPU servers on the tiny model
(``--kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both",
"kv_buffer_device":"cpu"}'``, side-channel ports 5610/5620, one core each), posting the prefill then
the decode leg by hand: with a 2 s pause between the legs, 5 of 8 decodes took 13-31 s (the rest
0.2-0.9 s); without a pause 1 of 8 took 29 s. The KV transfer itself was never slow
(``vllm:nixl_xfer_time_seconds`` 1-135 ms per transfer).

Cause (py-spy dumps during a stall, and vLLM's source): the decode engine was not stepping. Its
EngineCore sat in ``MultiprocExecutor`` waiting for the Worker's answer while the Worker sat in
``MessageQueue.acquire_read`` waiting for the EngineCore: both ends of vLLM's shared-memory message
queue (``vllm/distributed/device_communicators/shm_broadcast.py``) were parked on their ZeroMQ
wake-up sockets. The queue's writer wakes a parked reader with a PUB/SUB ping sent with
``SNDHWM=1``, which can be dropped; a reader that misses it only rechecks the shared flag every
``SHM_READER_RECHECK_INTERVAL_MS`` = 5 s (vLLM's own comment calls this "lost-notify recovery").
Readers park after 1 s without traffic, which is exactly the state of an idle engine that receives a
request needing remote KV: the request waits in ``WAITING_FOR_REMOTE_KVS`` through a chain of
engine/worker round trips, and a few lost pings in a row add up to 10-30 s. Side effect: the
prefill side leases the blocks for ``kv_lease_duration`` = 30 s, so a long enough stall lets the
prefill pod free (and reuse) the blocks before the decoder reads them; its log then says "Releasing
expired KV blocks ... retrieved by 0 remote worker(s)" followed by "Potentially invalid KV blocks".
The sidecar cannot prevent this: it sends the decode leg as soon as the prefill answers.

Work-around (deployment config, no code change): run vLLM with ``VLLM_USE_SPINLOOP_EXT=1``, which
makes queue readers spin on the shared flag before parking. Same servers and client, 36 P/D round
trips with 0, 2 and 4 s pauses: no decode above 2.8 s (load average ~20 from other work on the
host). ``tests/slow/`` runs vLLM that way. A separate first-contact issue: the first transfer between
two engines performs a NIXL handshake over ZeroMQ with a 5 s timeout; on a loaded host it can
time out, and with vLLM's default ``kv_load_failure_policy: fail`` the decode answers 500, which
the sidecar turns into a local prefill (``reason="decode_kv_load"``).
"""
