"""``python -m ledger verify EXPORT --public-key KEYFILE``."""

import sys

from ledger.cli import main

sys.exit(main())
