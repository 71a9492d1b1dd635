"""``python -m healthsync [serve|…] [flags]``: the same command line as ``run.py``
and the installed ``healthsync`` command."""

import sys

from healthsync.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python -m healthsync"))
