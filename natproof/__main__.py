"""python -m natproof: the command line."""

import sys

try:
    from natproof.cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: the same one line as at any other moment
    sys.stderr.write("natproof: interrupted\n")
    sys.exit(130)

sys.exit(main())
