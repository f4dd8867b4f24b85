"""One thin module per pipeline step: parse arguments, call the library, write outputs.

Each module has ``add_arguments(parser)`` and ``run(args)``; ``ehrcxr.cli`` registers them as
subcommands. Heavy imports (torch, lightning) happen inside ``run`` so that ``ehrcxr --help`` and
the light stages start fast.
"""
