"""``python -m grpo_math`` = ``grpo-math``."""

import sys

from grpo_math.cli import main

sys.exit(main())
