"""selfsup: self-supervised visual representation learning.

Importing the package registers every built-in method, backbone, dataset and evaluator.
"""
__version__ = "0.1.0"
