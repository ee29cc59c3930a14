"""``python -m mtcore``: the command line (what torchrun's ranks run)."""

import sys

from mtcore.cli import main

sys.exit(main())
