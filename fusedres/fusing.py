"""``fusedres.fuse(model)``: hands a model to the converter for its family.

    torchvision's ResNet  -> fusedres.convert_torchvision.fuse_torchvision (a FusedResNet)
    timm's ResNet family  -> fusedres.timm_resnet.fuse_timm (a fused timm ResNet)

The two converters never import each other; what they share (the checks and
``UnsupportedModelError``) is ``fusedres.supported``.  The timm converter imports timm, so it is
imported only when a timm model arrives (timm is then imported already); ``import fusedres``
imports neither timm nor torchvision.
"""
import sys

from torch import nn

from .convert_torchvision import fuse_torchvision


def _timm_resnet_class():
    """timm's ResNet class if timm's resnet module is already imported, else None: like
    torchvision, timm is never imported by fusedres itself."""
    module = sys.modules.get("timm.models.resnet")
    return getattr(module, "ResNet", None) if module is not None else None


def fuse(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return a FusedResNet computing the same function as the torchvision ResNet ``model``;
    for timm's ResNet family, a fused timm ResNet (``fusedres.timm_resnet.fuse_timm``).

    Any depth, BasicBlock or Bottleneck, width and groups (wide_resnet, resnext),
    ``replace_stride_with_dilation``, ``zero_init_residual`` and ``num_classes`` are
    accepted.  ``state_dict()`` keys and values are the input's.  With ``inplace=False`` (the
    default) the model is deep-copied first; with ``inplace=True`` the fused model shares the
    input's submodules and parameters (no copy, and the original must not be used for
    something else).  Anything that is not a torchvision-style ResNet raises
    ``UnsupportedModelError`` naming the part, as does a convolution, BatchNorm or ReLU that is
    a subclass of ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.ReLU`` (``fusedres.supported``);
    the whole model is checked before anything is changed, so when ``fuse`` raises, the input
    model is untouched in both modes.
    """
    timm_resnet = _timm_resnet_class()
    if timm_resnet is not None and isinstance(model, timm_resnet):
        # Imported here, not above: it imports timm, which `import fusedres` must not.
        from .timm_resnet import fuse_timm
        return fuse_timm(model, inplace=inplace)
    return fuse_torchvision(model, inplace=inplace)
