"""The tile product every K walk accumulates with."""
import triton
import triton.language as tl


@triton.jit
def accumulate(acc, a, b, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
               SWAP_AB: tl.constexpr):
    """``acc + a @ b`` on tensor cores, or with SWAP_AB the transposed tile ``acc + b^T a^T``
    (the transposes are free: shared-memory descriptors).  The interpreter's tl.dot runs on
    NumPy, which has no bfloat16, so there (UPCAST_DOT) the tiles are widened to fp32 first."""
    if UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if SWAP_AB:
        acc = tl.dot(tl.trans(b), tl.trans(a), acc, input_precision=DOT_PRECISION)
    else:
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc
