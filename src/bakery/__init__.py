"""bakery: golden images and first-boot identity for Patroni clusters on OpenStack."""

__version__ = "0.1.0"
