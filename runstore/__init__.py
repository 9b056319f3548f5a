"""Runstore's public Python packages: `runstore.workflows` is the worker SDK."""
