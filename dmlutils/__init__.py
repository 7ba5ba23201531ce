"""dmlutils: the helper package of *Multi-Similarity Loss, Reproduced*."""

__version__ = "0.1.0"
