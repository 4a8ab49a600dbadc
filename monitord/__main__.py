"""`python -m monitord` runs the same CLI as the `monitord` script."""

import sys

from monitord.cli import main

sys.exit(main())
