"""Model names on the command line and in the benchmark suites: torchvision's ResNet names
(``resnet50``, the keys of ``fusedres.MODELS``) or ``timm:<name>`` for timm's ResNet family
(``timm:resnet50d``).  Models are built with random weights; nothing is downloaded."""
import argparse

from .models import MODELS

TIMM_PREFIX = "timm:"
HELP = (f"a torchvision ResNet ({', '.join(sorted(MODELS))}) or timm:<name> for timm's ResNet "
        "family (e.g. timm:resnet50d; needs timm)")


def import_timm():
    """timm, or ModuleNotFoundError saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ModuleNotFoundError("timm:<name> models need timm, which is not installed; "
                                  "install it with: pip install 'fusedres[timm]'") from None
    return timm


def check_name(name: str) -> str:
    """``name`` if it names a model, else ValueError (ModuleNotFoundError without timm)."""
    if name.startswith(TIMM_PREFIX):
        if not import_timm().is_model(name[len(TIMM_PREFIX):]):
            raise ValueError(f"timm has no model named {name[len(TIMM_PREFIX):]!r}")
    elif name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected {HELP}")
    return name


def argument(text: str) -> str:
    """argparse ``type=`` for ``--model``."""
    try:
        return check_name(text)
    except (ValueError, ModuleNotFoundError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def create_eager(name: str):
    """The eager model ``name`` names: torchvision's or timm's (``pretrained=False``), with
    their fresh random initialisation."""
    if name.startswith(TIMM_PREFIX):
        return import_timm().create_model(name[len(TIMM_PREFIX):], pretrained=False)
    import torchvision
    return getattr(torchvision.models, check_name(name))(weights=None)


def create_fused(name: str):
    """The fused model ``name`` names, with random weights (fusedres' own constructor for
    torchvision names, ``fusedres.fuse`` of timm's model for ``timm:`` names)."""
    if name.startswith(TIMM_PREFIX):
        from .fusing import fuse
        return fuse(create_eager(name), inplace=True)
    return MODELS[check_name(name)]()
