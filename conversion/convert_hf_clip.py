#!/usr/bin/env python
"""Convert a transformers CLIP folder to a dualclip folder, or with `--to hf` a dualclip folder back to stock
transformers CLIP.

Same as `dualclip convert SRC OUT --from hf [options]` (or `dualclip convert SRC OUT --to hf`).
"""

import sys

from dualclip.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    exporting = any(arg == "--to" or arg.startswith("--to=") for arg in args)
    sys.exit(main(["convert", *([] if exporting else ["--from", "hf"]), *args]))
