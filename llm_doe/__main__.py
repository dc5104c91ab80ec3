"""``python -m llm_doe`` is ``python -m llm_doe.search``."""

import sys

from llm_doe.search import main

sys.exit(main())
