"""The local target: a cluster of QEMU VMs of the locally baked image on this machine."""
