"""A plain persistent TMA GEMM, ``c = a @ b``, the way Triton's persistent-matmul tutorial
writes it: no epilogue, nothing of the convolution.  It is a reference, not a path of the
model: on a 1x1 layer's GEMM it shows what Triton reaches on the card, beside cuBLAS and the
fused kernel (benchmarks/test_layers.py).

Grid: one program per SM at most; each walks the output tiles ``pid, pid + programs, ...``
in grouped order (``GROUP_M`` row tiles share their column sweep, for L2 reuse), loading
both operands through 2-D TMA descriptors made once per program.  ``FLATTEN``: the tile loop
and the K loop software-pipelined as one loop (the tutorial's option; what the fused
kernel's flattened persistent candidates are compared with).
"""
import triton
import triton.language as tl


@triton.jit
def gemm_descriptors(a_ptr, b_ptr, c_ptr, M, N: tl.constexpr, K: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The 2-D TMA descriptors of a [M, K], b [K, N] and c [M, N], row-major, in tiles."""
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1],
                                       block_shape=[BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(b_ptr, shape=[K, N], strides=[N, 1],
                                       block_shape=[BLOCK_K, BLOCK_N])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1],
                                       block_shape=[BLOCK_M, BLOCK_N])
    return a_desc, b_desc, c_desc


@triton.jit
def persistent_matmul_kernel(
    a_ptr,   # [M, K] row-major
    b_ptr,   # [K, N] row-major
    c_ptr,   # [M, N] row-major, a's dtype
    M,
    N: tl.constexpr, K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr, FLATTEN: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # the interpreter's NumPy dot has no bfloat16: widen first
):
    a_desc, b_desc, c_desc = gemm_descriptors(a_ptr, b_ptr, c_ptr, M, N, K, BLOCK_M, BLOCK_N,
                                              BLOCK_K)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    k_steps: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
    in_group: tl.constexpr = GROUP_M * tiles_n
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS, flatten=FLATTEN):
        group = tile // in_group
        first_m = group * GROUP_M
        rows = min(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (tile % in_group) % rows
        pid_n = (tile % in_group) // rows
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(k_steps):
            a = a_desc.load([pid_m * BLOCK_M, step * BLOCK_K])
            b = b_desc.load([step * BLOCK_K, pid_n * BLOCK_N])
            if UPCAST_DOT:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc)
        c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(c_ptr.dtype.element_ty))
