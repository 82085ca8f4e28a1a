"""Conformance suite of the ext_proc transports (grpc.aio and epp.transport), issue 16."""
