"""meshctl: the SRE console for meshnode (commands and rich views over gRPC).

The public surface is the ``meshctl`` console script, ``cli.main:main``. Everything else is internal
(``cli._*``). cli/ imports nothing of meshnode but the generated ``meshnode.v1`` protobuf modules, and
loads gRPC, protobuf and rich only when a command needs them, so ``meshctl --help`` stays fast.
"""

from meshnode.cli.main import main

__all__ = ["main"]
