"""``python -m fastadam bench`` / ``python -m fastadam info``."""
import sys

from .cli import main

sys.exit(main())
