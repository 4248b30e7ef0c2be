"""Serving: OIP v2 server and Triton model repositories."""
