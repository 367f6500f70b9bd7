"""Helpers shared by the test suite: job trees, S3 server, subprocess runners."""
