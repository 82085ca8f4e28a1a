"""The scheduler framework (llm-d's shape): per request a profile handler picks profiles; each
profile runs filters → weighted scorers → a picker; the handler then names the primary result.

``framework`` holds the plugin interfaces and :class:`~epp.scheduling.framework.SchedulerProfile`,
``scheduler`` the profile loop, ``metrics`` the EPP's own Prometheus series. The plugins live in
:mod:`epp.plugins`, the YAML → plugins wiring in :mod:`epp.config.loader`, and the request-level
flow around the scheduler (admission, candidates, bookkeeping) in :mod:`epp.director`.
"""
