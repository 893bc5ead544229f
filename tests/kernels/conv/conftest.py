"""Fixtures that run a conv kernel test with one K walk or variant.  Each yields a
``variant(base_config, consts) -> ConvConfig`` for ``cases.launch``: under the interpreter
the variant of its one large config, on a GPU of the default config (or of the GPU's own
candidate where the variant has its own tiles)."""
import pytest

from fusedres.kernels import INTERPRETED
from fusedres.kernels.conv import configs

from .cases import needs_sm_90, tma_config


@pytest.fixture(params=[False, True], ids=["hoisted_taps", "recomputed_taps"])
def tap_walk(request):
    """Both tap-major pointer walks: offsets hoisted per tap, or recomputed every step."""
    return lambda base, consts: base._replace(recompute_taps=request.param)


# Split-K slices at most this many, of BLOCK_K=16 steps so that even 1x1 layers have steps
# to split.
SPLIT_SLICES = 3


@pytest.fixture
def split_k():
    def variant(base, consts, slices=SPLIT_SLICES):
        return base._replace(block_k=16, split_k=min(configs.k_steps(consts, 16), slices))
    return variant


@pytest.fixture
def tma():
    needs_sm_90()
    return tma_config


@pytest.fixture
def strip():
    """The stem's strip walk: under the interpreter one strip of the filter row rounded up
    to a power of two; on a GPU the first strip candidate without the channel padding."""
    def variant(base, consts):
        if not INTERPRETED:
            return configs.strip_candidates(consts)[0]._replace(pad_c=0)
        block_k = max(16, 1 << (consts["KW"] * consts["C_in"] - 1).bit_length())
        return base._replace(block_k=block_k, strip=True)
    return variant


@pytest.fixture
def padded_strip():
    """The strip walk over the 3-channel input padded to 4 channels by the launcher."""
    def variant(base, consts):
        if not INTERPRETED:
            return next(c for c in configs.strip_candidates(consts) if c.pad_c)
        return base._replace(block_k=configs.STRIP_BLOCK_K, strip=True, pad_c=configs.PAD_C)
    return variant
