"""Stack configuration for GKE GPU capacity (owned by the cloud work, issue 3)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class GkeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    project: str
    region: str
    zone: str
