"""Integration tests against real third-party servers (marker `slow`)."""
