"""``python -m genvi`` runs the command line."""

import sys

from genvi.cli import main

sys.exit(main())
