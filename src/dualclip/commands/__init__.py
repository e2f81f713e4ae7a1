"""Subcommands of the `dualclip` command (see dualclip.cli)."""
