"""``python -m binder_service``."""

import sys

from .app import main

sys.exit(main())
