"""difforge: train diffusion models on your own images, sample, evaluate, edit, serve.

Importing the package pulls only torch and numpy; optional dependencies load inside
the modules that use them.
"""

__version__ = "0.1.0"
