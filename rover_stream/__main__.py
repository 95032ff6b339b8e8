"""``python -m rover_stream``: the ``rover-stream`` command."""

import sys

from .cli import main

sys.exit(main())
