"""pulumi-llmd's bundled endpoint picker (EPP), P/D sidecar and vLLM simulator."""
