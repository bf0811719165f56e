"""``python -m car_hf.cli``: the ``car-hf`` command."""

import sys

from . import main

sys.exit(main())
