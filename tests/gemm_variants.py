"""A variant of the reference GEMM (kernels/gemm/kernel.py) that the SASS reader's tests compile
for sm_90 (tests/test_sass.py, through tests/standin_runner.py): the same TMA loads and
tile with no persistent loop at all (one tile per program).  Test material, not a path of
the model."""
import triton
import triton.language as tl


@triton.jit
def one_tile_matmul_kernel(
    a_ptr, b_ptr, c_ptr, M,
    N: tl.constexpr, K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The same tile and loads, one output tile per program (no persistent loop)."""
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1],
                                       block_shape=[BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(b_ptr, shape=[K, N], strides=[N, 1],
                                       block_shape=[BLOCK_K, BLOCK_N])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1],
                                       block_shape=[BLOCK_M, BLOCK_N])
    tiles_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    pid_m = tl.program_id(0) // tiles_n
    pid_n = tl.program_id(0) % tiles_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range((K + BLOCK_K - 1) // BLOCK_K):
        a = a_desc.load([pid_m * BLOCK_M, step * BLOCK_K])
        b = b_desc.load([step * BLOCK_K, pid_n * BLOCK_N])
        acc = tl.dot(a, b, acc)
    c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(c_ptr.dtype.element_ty))
