"""`python -m hftune ...` (also `accelerate launch -m hftune ...` and `torchrun -m hftune ...`)."""

import sys

from hftune.cli import main

if __name__ == "__main__":
    sys.exit(main())
