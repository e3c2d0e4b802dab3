"""Entry point of `python -m demo`."""

import os
import sys

# TensorFlow's C++ start-up chatter would bury the demo's own progress; set
# before TensorFlow is imported, and only if the user has not chosen a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from demo.train import main

sys.exit(main())
