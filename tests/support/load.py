"""The harness's command plan in the form the tests publish (`harness.load`)."""

from harness import load
from harness.load import command_mix, envelope
from orders.contracts import ShippingAddress

ADDRESS = ShippingAddress(**load.ADDRESS)

__all__ = ["ADDRESS", "command_mix", "envelope"]
