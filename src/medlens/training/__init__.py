"""medlens.training."""
