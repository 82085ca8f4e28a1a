"""pulumi-llmd's body-based router: an Envoy ext_proc server that routes a request by the model its
body names.

A Gateway matches headers, and an OpenAI request names its model in the body. The router reads the
body's ``model``, looks it up in its routing table (each base model with the adapters and rewrite
names that reach it) and sets ``X-Gateway-Base-Model-Name``, which the HTTPRoute's per-model rules
match, so each model's InferencePool and endpoint picker get their requests. Unknown models get a
404 from the router, malformed bodies a 400. It runs in front of the endpoint pickers, like GIE's
body-based router and its successor llm-d-inference-payload-processor, and serves ext_proc over TLS
(self-signed unless given a certificate) like the EPP, whose TLS, health and message modules it
reuses.

``table`` (the routing table), ``stream`` (one ext_proc stream per request), ``server`` (the
listeners and the drain), ``metrics`` and ``cli`` (``python -m bbr``).
"""
