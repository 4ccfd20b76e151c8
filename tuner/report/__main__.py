"""`python -m tuner.report STUDY_DIR`: see `tuner.report.cli`."""

import sys

from tuner.report.cli import main

sys.exit(main())
