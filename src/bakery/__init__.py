"""bakery: golden PostgreSQL/Patroni images for OpenStack."""
