"""Stack configuration for EKS GPU capacity (owned by the cloud work, issue 3)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EksConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    region: str
    availability_zone: str
