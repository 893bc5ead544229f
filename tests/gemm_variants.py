"""A variant of the reference GEMM (kernels/gemm/kernel.py) that the SASS reader's tests compile
for sm_90 (tests/test_sass.py, through tests/standin_runner.py): the same TMA loads and
tile with no persistent loop at all (one tile per program).  Test material, not a path of
the model."""
import triton
import triton.language as tl

from fusedres.kernels.gemm.kernel import gemm_descriptors


@triton.jit
def one_tile_matmul_kernel(
    a_ptr, b_ptr, c_ptr, M,
    N: tl.constexpr, K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The same tile and loads, one output tile per program (no persistent loop)."""
    a_desc, b_desc, c_desc = gemm_descriptors(a_ptr, b_ptr, c_ptr, M, N, K, BLOCK_M, BLOCK_N,
                                              BLOCK_K)
    tiles_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    pid_m = tl.program_id(0) // tiles_n
    pid_n = tl.program_id(0) % tiles_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range((K + BLOCK_K - 1) // BLOCK_K):
        a = a_desc.load([pid_m * BLOCK_M, step * BLOCK_K])
        b = b_desc.load([step * BLOCK_K, pid_n * BLOCK_N])
        acc = tl.dot(a, b, acc)
    c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(c_ptr.dtype.element_ty))
