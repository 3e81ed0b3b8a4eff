"""``python -m meshnode.cli``: the same as the ``meshctl`` console script."""

import sys

from meshnode.cli.main import main

sys.exit(main())
