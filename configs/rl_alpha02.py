"""RL at one scenario, α = 0.2, after labelling and SFT at the same α."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(config_string=None):
    config = common.get_base_config(common.parse_setup(config_string))
    config.alphas = (0.2,)
    return config
