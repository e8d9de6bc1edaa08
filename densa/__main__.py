"""`python -m densa ...` is the `densa` command."""

import sys

from densa.launch.cli import main

if __name__ == "__main__":
    sys.exit(main())
