"""meshnode: a network-health sensor node for Linux fleets.

Keep this module light: ``meshctl`` imports the generated ``meshnode.v1`` package, which imports this one.
"""

__version__ = "0.1.0"
