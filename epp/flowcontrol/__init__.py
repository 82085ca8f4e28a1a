"""llm-d's flow control for the EPP: requests wait in per-band, per-flow queues and are dispatched
to the scheduler while the saturation detector says the pool has room (``featureGates:
[flowControl]`` and the ``flowControl`` config section). See :mod:`epp.flowcontrol.controller`.

Importing this package registers the flow-control policy plugins (fairness, ordering, usage limits)
in the scheduler's plugin registry under llm-d's type names.
"""

from epp.flowcontrol import policies
from epp.flowcontrol.config import FEATURE_GATE, FlowControlConfig, parse_flow_control
from epp.flowcontrol.controller import FlowController, FlowControlRejected, FlowRequest, Outcome

__all__ = [
    "FEATURE_GATE",
    "FlowControlConfig",
    "FlowControlRejected",
    "FlowController",
    "FlowRequest",
    "Outcome",
    "parse_flow_control",
    "policies",
]
