"""HealthSync's command line entry: ``python run.py --help``."""

import sys

from healthsync.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
