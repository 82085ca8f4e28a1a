"""Cloud platforms: GPU capacity with RDMA (GKE) or EFA (EKS), handed to the spine as a Platform.

`gke.provision` / `eks.provision` create or adopt the cluster, the GPU nodes and their fabric, and
return the Kubernetes provider built from that cluster plus the pod-side networking. Machine facts
live as sourced data in `gke_machines.py` and `efa.py`; `render_stubs.py` feeds the offline render.
"""
