"""`python -m authority` is the `authority` command."""

import sys

from authority.cli import main

sys.exit(main())
