"""Machine facts as sourced data (GKE machine types, EC2 EFA layouts): a leaf both the config
model (to validate) and the cloud components (to build) import."""
