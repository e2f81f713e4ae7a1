"""`python -m dualclip ...` (and `accelerate launch -m dualclip ...`, `torchrun -m dualclip ...`): the CLI."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
