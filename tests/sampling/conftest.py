"""The sampler tests reuse the model tests' helpers (random models, padded batches, HF references)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models"))
