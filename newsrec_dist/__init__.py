"""newsrec-dist: distributed training for LLM-powered news recommendation."""

from newsrec_dist.ray_auth import default_token_auth

__version__ = "0.1.0"

default_token_auth()  # before any module of ours imports Ray
