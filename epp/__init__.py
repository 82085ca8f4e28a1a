"""pulumi-llmd's bundled endpoint picker (EPP): an Envoy ext_proc server with llm-d's scheduler.

A request flows down the layers: ``server`` (ext_proc transport and protocol) → ``director``
(admission, candidates, bookkeeping) → ``scheduling`` (the framework: profiles of filters →
scorers → picker) running ``plugins``; ``discovery`` and ``scrape`` keep the ``datastore`` of
endpoints current. ``config`` builds the scheduler from an EndpointPickerConfig; ``cli`` and
``runtime`` wire the process together. See docs/ARCHITECTURE.md for who may import whom.
"""
