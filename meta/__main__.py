"""`python -m meta` is `python -m meta.train` (see its --help)."""

import sys

from meta.train import main

sys.exit(main())
