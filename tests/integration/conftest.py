from __future__ import annotations

import sys
from pathlib import Path

# tiny_models.py is importable as `tiny_models` (and so as `tiny_models:function` from the CLI).
sys.path.insert(0, str(Path(__file__).parent))
