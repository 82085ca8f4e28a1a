"""Where the endpoint set comes from: a static endpoints file (``static``) or the Kubernetes
InferencePool and its Ready pods (``kubernetes``). Both write into :class:`epp.datastore.Datastore`."""
