"""``python -m fastsgd`` runs the ``fastsgd`` command."""
import sys

from .cli import main

sys.exit(main())
