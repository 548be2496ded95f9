"""Run the command-line interface with ``python -m steercontrol``."""

import sys

from steercontrol.cli import main

sys.exit(main())
