#!/usr/bin/env python
"""Convert an OpenCLIP checkpoint (hub folder, or a raw checkpoint with --openclip-config/--openclip-model) to a
dualclip folder.

Same as `dualclip convert SRC OUT --from openclip [options]`; see `dualclip convert --help`.
"""

import sys

from dualclip.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--from", "openclip", *sys.argv[1:]]))
