"""``python -m car_hf.cli``: the ``car-hf`` command."""

import sys

from car_hf.cli import main

sys.exit(main())
