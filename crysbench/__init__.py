"""crysbench: a benchmarking harness for machine learning on crystals.

Importing crysbench has no side effects: the native extension is loaded on the first op call.
"""

__version__ = "0.1.0"
