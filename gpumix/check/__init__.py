"""``gpumix check``: manifest files read, checked against the admission rules and fixed
in place, offline (see docs/check.md)."""
