"""Input checks shared by the launchers, so every launcher words its errors alike and bad
input stops here, never deep inside Triton."""
import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_launch_input(name, t):
    """A launcher's main activation: a 4-D tensor of a supported dtype."""
    _check_4d(name, t)
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"unsupported {name} dtype {t.dtype}; expected one of "
                        f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")


def check_activation(name, t, device, dtype):
    """Another activation of the same launch: 4-D, on the input's device, in its dtype."""
    _check_4d(name, t)
    _check_device_dtype(name, t, device, dtype)


def check_packed(name, t, rows, c_out, device, dtype):
    """A packed weight ``[rows, c_out]``, contiguous, on the input's device, in its dtype."""
    if t.shape != (rows, c_out):
        raise ValueError(f"{name} must have shape {(rows, c_out)} (packed "
                         f"[KH*KW*C_in/groups, C_out]), got {tuple(t.shape)}")
    _check_device_dtype(name, t, device, dtype)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _check_4d(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(t.shape)}")


def _check_device_dtype(name, t, device, dtype):
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")
    if t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the input has dtype {dtype}")
