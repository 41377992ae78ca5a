"""Puts this folder on ``sys.path`` so that test modules import the shared test helpers (``standin``) by name.

The test folders have no ``__init__.py`` (pytest imports each test module by its basename); the helpers live
beside this file, outside the test folders, and are no test modules themselves.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
