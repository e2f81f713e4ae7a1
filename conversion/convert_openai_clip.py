#!/usr/bin/env python
"""Convert an OpenAI CLIP checkpoint (TorchScript archive or state-dict .pt) to a dualclip folder.

Same as `dualclip convert SRC OUT --from openai [options]`; see `dualclip convert --help`.
"""

import sys

from dualclip.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--from", "openai", *sys.argv[1:]]))
