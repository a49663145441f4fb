"""The golden image: definitions, the builder's payload, the local build, manifests."""
