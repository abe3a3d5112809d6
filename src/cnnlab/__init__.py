"""cnnlab: the classic CNN and RNN course experiments, done properly.

The library is importable on its own (`from cnnlab.models import create_model`); the `cnnlab`
command line (`cnnlab.cli`) is a thin layer over it.
"""

__version__ = "0.1.0"
