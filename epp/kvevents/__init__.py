"""Precise prefix-cache routing from vLLM's KV events (issue 14): the core, without plugins.

Modules, one kind of thing each:

* :mod:`~epp.kvevents.wire` — vLLM's ZMQ frames and msgpack event batches (strict decoder, encoder);
* :mod:`~epp.kvevents.hashing` — vLLM-exact block keys from token ids;
* :mod:`~epp.kvevents.tokenization` and :mod:`~epp.kvevents.chat_template` — prompt → token ids
  with the model's own tokenizer and chat template, as vLLM renders them;
* :mod:`~epp.kvevents.index` — which endpoint holds which block, bounded; longest cached prefix;
* :mod:`~epp.kvevents.subscriber` — one pod's event stream on asyncio (gaps, replay, resync);
* :mod:`~epp.kvevents.pool` — subscriptions that follow the pool (add/remove endpoint);
* :mod:`~epp.kvevents.publisher` — a vLLM-compatible publisher (simulator, tests);
* Prometheus metrics: the ``epp_kvevents_*`` series in :mod:`epp.metrics`.

How llm-d-router v0.10 configures the same thing (read at llm-d/llm-d-router ebab687, tag v0.10.0;
``deploy/config/epp-precise-prefix-cache-config.yaml``; READMEs under
``pkg/epp/framework/plugins/requestcontrol/dataproducer/{preciseprefixcache,tokenizer}`` and
``pkg/epp/framework/plugins/datalayer/source/notifications``; llm-d/llm-d-kv-cache
``docs/configuration.md``):

* ``token-producer`` (legacy alias ``tokenizer``) puts the prompt's token ids on the request.
  Backends: ``estimate`` (default, ~4 bytes/token, useless for precise matching), ``vllm``
  (``modelName``; ``vllm.url`` default ``http://localhost:8000``, ``vllm.timeout`` 5s,
  ``vllm.mmTimeout`` 30s; calls vLLM's ``/v1/completions/render`` and ``/v1/chat/completions/render``),
  deprecated ``udsTokenizerConfig``.
* ``precise-prefix-cache-producer`` owns the index: ``tokenProcessorConfig`` (``blockSizeTokens``
  default 16, deprecated ``blockSize``, ``hashSeed`` "", ``hashAlgorithm`` ``cbor-fnv``|``xxh64``),
  ``indexerConfig.kvBlockIndexConfig`` (``inMemoryConfig.size`` 1e8 keys, ``podCacheSize`` 10;
  ``costAwareMemoryConfig.size`` "2GiB"; ``redisConfig``; ``enableMetrics``),
  ``indexerConfig.kvCacheBackendConfigs`` (medium weights, default gpu 1.0, cpu 0.8),
  ``kvEventsConfig`` (``zmqEndpoint`` to bind one SUB for all pods; ``topicFilter`` "kv@";
  ``concurrency`` 4; ``engineType`` vllm|sglang; ``discoverPods`` true with
  ``podDiscoveryConfig.socketPort`` 5557 and ``replaySocketPort`` off), ``speculativeIndexing``
  (false) and ``speculativeTTL`` (2s). The scorer is the generic ``prefix-cache-scorer`` with
  ``prefixMatchInfoProducerName: precise-prefix-cache-producer``.
* ``endpoint-notification-source`` delivers endpoint add/update/delete to extractors; the producer
  is its extractor and subscribes to ``tcp://<pod-ip>:<socketPort + DP rank>`` on add, and on delete
  unsubscribes and clears the pod's index entries. The index identity is the endpoint's
  ``ip:port``; in the centralized ``zmqEndpoint`` mode it comes from the topic
  ``kv@<pod-ip>:<port>@<model>`` instead.
* llm-d keys its index by its own request keys computed from the events' ``token_ids`` (an
  engine-key → request-key map resolves removals and parents), so its block size and seed need
  not match vLLM's. This package keys the index by vLLM's own block hashes and computes the same
  hashes from the request's tokens (:mod:`~epp.kvevents.hashing` explains the trade-off).
"""
