"""The ``imagefs`` subcommands, one module each, as ``imagefs --help`` lists them.

Each module has ``add_arguments(subparsers, ...)``, which adds its parser(s) and
sets ``run``, and ``run(args)``, which does the command and returns its exit
code (errors are raised: ``imagefs.cli`` turns them into a line and a code).
"""
