"""newsrec-dist: distributed training for LLM-powered news recommendation."""

__version__ = "0.1.0"
