"""Run the command line as `python -m gptclassifier`."""

import sys

from gptclassifier.cli import main

sys.exit(main())
