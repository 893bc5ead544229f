"""A plain persistent TMA GEMM (no epilogue): the reference Triton GEMM on a 1x1 layer's
shape (issue 23's references), not a path of the model."""
from .launcher import persistent_matmul

__all__ = ["persistent_matmul"]
