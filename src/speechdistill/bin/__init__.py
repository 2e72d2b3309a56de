"""Stage entry points: ``python -m speechdistill.bin.<name> --help``."""
