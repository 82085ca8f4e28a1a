"""The scheduler framework (llm-d's shape): per request a profile handler picks profiles; each
profile runs filters → weighted scorers → a picker; the handler then names the primary result.

``framework`` holds the plugin interfaces and :class:`~epp.scheduling.framework.SchedulerProfile`,
``registry`` the type-name → factory table and default producers, ``params`` strict parameter
reading, ``errors`` the :class:`ConfigError` every layer raises for a bad config, ``scheduler`` the
profile loop. The plugins live in :mod:`epp.plugins`, the YAML → plugins wiring in
:mod:`epp.config`, and the request-level flow around the scheduler in :mod:`epp.director`.
"""
