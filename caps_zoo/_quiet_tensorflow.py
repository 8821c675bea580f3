"""Importing this module imports TensorFlow without its start-up chatter
(``caps_zoo._quiet_start``).

``import caps_zoo`` imports no TensorFlow (a recipe's ``--help`` answers at
once, issue 15), so the quiet start cannot run there: every caps_zoo module
that imports tensorflow or keras imports this module first, in one line,

    from caps_zoo import _quiet_tensorflow  # noqa: F401  (first: TensorFlow's start-up chatter hidden)

(or sits in a subpackage whose ``__init__`` does, before anything else).
Whichever caps_zoo module a program imports first, TensorFlow starts
quietly; ``tests/test_quiet_start.py`` scans the package for the rule.
"""

from caps_zoo._quiet_start import import_tensorflow

import_tensorflow()
