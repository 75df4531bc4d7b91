"""python -m natproof: the command line."""

import sys

from natproof.cli import main

sys.exit(main())
