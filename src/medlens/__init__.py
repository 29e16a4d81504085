"""medlens: segment and classify 2D medical images; train, evaluate, bundle and serve."""

__version__ = "0.1.0"
