"""A node's identity: the plan (names, addresses) and its bundle (files, user-data)."""
