"""gitsync: a GitOps agent for plain Docker hosts."""

__version__ = "0.1.0"
