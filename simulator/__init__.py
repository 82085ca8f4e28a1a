"""A simulated vLLM server for tests, the local demo and routing benchmarks.

It speaks vLLM's OpenAI API and metrics (``python -m simulator --model NAME``) without running a model:
an engine loop (:mod:`simulator.engine`) schedules requests the way vLLM does (batch limit, waiting
queue, chunked prefill, prefix cache of hashed blocks with LRU eviction, preemption), and sleeps
for the time each engine step would take. See :mod:`simulator.params` for the timing model and the
measured defaults, :mod:`simulator.tokens` for the 4-characters-per-token pseudo-tokenizer, and
:mod:`simulator.transfer` for the NixlConnector-like P/D behaviour.

CPU cost of the simulator itself (``tools/sim_cpu_cost.py``, 400 completions of 1000-token
prompts, 16 concurrent, half streaming, modelled latency set to zero, on the 2-core reference
machine): 0.25 ms of CPU per request with one output token, 0.98 ms with 32 (about 23 us per
streamed token). Eight simulated pods at 10 requests/s each therefore use well under a tenth of a
core.
"""
