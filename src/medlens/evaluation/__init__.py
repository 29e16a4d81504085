"""medlens.evaluation."""
