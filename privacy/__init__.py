"""Privacy primitives of fmtl, auditable on their own.

`privacy.secagg` is secure aggregation (pure, no I/O); `privacy.dp` is differentially
private training and budget accounting. Nothing in this package imports the rest of fmtl.
"""
