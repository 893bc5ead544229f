"""The ``fusedres`` command line (also ``python -m fusedres``).

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status); they are imported only when chosen, so
``fusedres --help`` stays fast.
"""
import argparse
import importlib
import math
import sys

SUBCOMMANDS = {
    "bench": ("fusedres.bench", "time eager vs fused ResNet inference (the main job)"),
    "inspect": ("fusedres.gpu_inspect",
                "compile every kernel specialisation of a model for a GPU target and report "
                "registers, spills, shared memory and tensor-core use (no GPU needed)"),
    "warmup": ("fusedres.precompile",
               "compile, in parallel on every core, every kernel a model will launch on this "
               "GPU, so that its first forward does not wait on compiles"),
}


def _positive(convert, kind):
    """An argparse ``type=`` accepting only values above zero: 0 would otherwise silently mean
    "the default" and a negative size end in a traceback deep inside torch."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):  # nan fails both tests
            raise argparse.ArgumentTypeError(f"must be a positive {kind}, got {text}")
        return value
    return parse


positive_int = _positive(int, "integer")
positive_float = _positive(float, "finite number")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fusedres", description="Fused conv + BatchNorm + residual + ReLU Triton kernels "
                                     "for ResNet inference.")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = (argv if argv is not None else sys.argv[1:])[:1]
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if chosen == [name]:
            importlib.import_module(module).add_arguments(sub_parser)
    args = parser.parse_args(argv)
    return importlib.import_module(SUBCOMMANDS[args.command][0]).run(args)


if __name__ == "__main__":
    sys.exit(main())
