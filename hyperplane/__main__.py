"""``python -m hyperplane``: the same as the ``hyperplane`` command."""
import sys

from hyperplane.cli import main

sys.exit(main())
