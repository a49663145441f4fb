"""OpenStack: connections, the cloud bake, image generations, rebuild, launch."""
