"""Data pipelines for the project's own offline image-text sets."""
