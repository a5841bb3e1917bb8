"""One module per ``cycleinr`` sub-command: ``add_arguments(parser)`` and ``run(args)``."""


def add_scale_arguments(parser) -> None:
    """--scale | --spacing and --axis: how far and along which axis, the same for every command."""
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--scale", type=float, help="upsampling factor r > 1 (e.g. 5, 2.5)")
    amount.add_argument("--spacing", type=float, help="target slice spacing in mm")
    parser.add_argument("--axis", choices=["I", "J", "K", "i", "j", "k"],
                        help="slice axis as an image index letter (default: the coarsest spacing)")
