"""delivery: signed webhooks to partners and the Redis latest-news cache they read."""
