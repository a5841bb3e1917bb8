"""One module per ``cycleinr`` sub-command: ``add_arguments(parser)`` and ``run(args)``."""
