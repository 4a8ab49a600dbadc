"""Provider double fixtures."""
