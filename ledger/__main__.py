"""``python -m ledger verify EXPORT --public-key KEYFILE`` and ``python -m ledger witness``."""

import sys

from ledger.cli import main

sys.exit(main())
