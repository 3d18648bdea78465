"""aesthetic-audit: measure how far image generators and reward models override anti-aesthetic requests."""

__version__ = "0.1.0"
