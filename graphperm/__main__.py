"""``python -m graphperm`` runs the command line."""

import sys

from graphperm.cli import main

sys.exit(main())
