"""medlens.data."""
