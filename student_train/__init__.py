"""The streaming student trainer."""
