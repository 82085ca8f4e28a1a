"""Cloud platforms: GPU capacity with RDMA (GKE) or EFA (EKS), handed to the stack as a Platform.

`gke.provision` / `eks.provision` create or adopt the cluster, the GPU nodes and their fabric, and
return the Kubernetes provider built from that cluster plus the pod-side networking. Machine facts
live as sourced data in :mod:`pulumi_llmd.catalog`; the offline render stubs live in :mod:`render.stubs`.
"""
