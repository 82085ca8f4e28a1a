"""EndpointPickerConfig YAML → a built :class:`~epp.config.scheduler_config.SchedulerConfig`
(``loader``), and llm-d's sample configs (``samples``)."""
