"""The durable queue of everything bound for the cloud."""
