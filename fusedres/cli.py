"""The ``fusedres`` command line (also ``python -m fusedres``).

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status); they are imported only when chosen, so
``fusedres --help`` stays fast.
"""
import argparse
import importlib
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
