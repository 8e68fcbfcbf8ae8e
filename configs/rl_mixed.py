"""The paper's one-model-for-all-scenarios setup: α drawn per prompt from {0.2, 0.5, 0.8}."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(config_string=None):
    config = common.get_base_config(common.parse_setup(config_string))
    config.alphas = (0.2, 0.5, 0.8)
    return config
