"""The epilogue every output tile ends with, in registers before its only store."""
import triton
import triton.language as tl


@triton.jit
def bias_residual_act_store(acc, bias, res_ptr, residual, out_ptr, out_off, out_mask,
                            HAS_RESIDUAL: tl.constexpr, RESIDUAL_LOADED: tl.constexpr,
                            RELU: tl.constexpr):
    """``out = act(acc + bias [+ residual])`` in fp32, rounded once at the store.  ``bias``:
    the tile's channels' fp32 bias, loaded by the caller; the residual (HAS_RESIDUAL) is
    loaded here from ``res_ptr``, or with RESIDUAL_LOADED given loaded as ``residual`` (else
    unused); ``out_off``/``out_mask``: the tile's NHWC elements."""
    acc += bias[None, :]
    if HAS_RESIDUAL:
        if not RESIDUAL_LOADED:
            residual = tl.load(res_ptr + out_off, mask=out_mask, other=0.0)
        acc += residual.to(tl.float32)
    if RELU:
        # torch.relu keeps NaN; a plain maximum (and PTX max) would turn it into 0 and hide
        # an overflow.
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
