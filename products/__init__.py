"""The products the platform has been run on: each an event catalogue and a synthetic generator of its raw data."""
