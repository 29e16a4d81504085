"""medlens.inference."""
