"""fmtl: privacy-hardened federated multi-task learning.

This package is the composition root: the `fmtl` command line, which gathers the
agent's and the coordinator's commands (they never import each other), and the demo.
"""

__version__ = "0.1.0"
