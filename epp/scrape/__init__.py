"""Model-server metrics: the per-endpoint polling loop (``scraper``), its lean HTTP client
(``http``) and the targeted vLLM /metrics parser (``parser``)."""
