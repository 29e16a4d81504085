"""medlens.models."""
