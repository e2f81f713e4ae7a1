"""Empty: open_clip imports this module by name only at import time."""
