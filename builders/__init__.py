"""Dataset builders: each publishes a versioned dataset repo on the Hub."""
