"""``python -m pynenc_mongo.cli``: the same as ``pynenc-mongo-setup-indexes``."""

import sys

from pynenc_mongo.cli import main

sys.exit(main())
