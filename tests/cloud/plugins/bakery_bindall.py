"""Neutron ML2 mechanism driver for the test cloud: binds every port, no agents needed.

Neutron's own `test` driver asserts on real use and Nova's boot then fails with
MaxRetriesExceeded; this one binds each port on its first segment as an OVS port and marks it
ACTIVE, which is all Nova's fake compute hosts need. Registered through the entry point
`neutron.ml2.mechanism_drivers: bakery_bindall` (written by tests/cloud/plugins.py).
"""

from neutron_lib import constants
from neutron_lib.plugins.ml2 import api


class BindAllMechanismDriver(api.MechanismDriver):
    def initialize(self):
        pass

    @property
    def connectivity(self):
        return constants.L2

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                "ovs",
                {"port_filter": True, "ovs_hybrid_plug": False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return
