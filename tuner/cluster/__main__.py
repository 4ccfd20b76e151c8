"""`python -m tuner.cluster CLUSTER_YAML [...]`: check cluster configs offline."""

import sys

from tuner.cluster.config import main

sys.exit(main())
