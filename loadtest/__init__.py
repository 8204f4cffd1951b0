"""Locust scenarios, the comparison runner and its report (`make loadtest`)."""
