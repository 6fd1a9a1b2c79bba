"""``python -m selfsup``: the command line, also what ``torchrun -m selfsup`` starts."""
import sys

from .cli.main import main

sys.exit(main())
