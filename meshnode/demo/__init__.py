"""``meshnode lab``: the one-command demo lab (issue 8, item 5).

Modules (internal):

    _control     the state directory (/run/meshnode-lab), its lock, the control socket protocol
    _supervisor  the process that owns the lab (``python -m meshnode.demo._supervisor``): builds the scenario
                 fleet, serves fault / heal / status / down on the control socket, tears down on exit
    _lab_cmd     the ``meshnode lab`` subcommands: up, status, fault, heal, meshctl, down

The lab itself (hosts, traffic, faults) is ``meshnode.lab.Fleet``, the same fleet the blame tests build.
"""
