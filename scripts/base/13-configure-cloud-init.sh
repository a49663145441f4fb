#!/bin/bash
# cloud-init defaults for every node: host keys of modern types only (RSA generation alone
# costs ~20 s of an emulated boot), no package work at boot (the image has everything), and
# the built-in C.UTF-8 locale (cloud-init's default en_US.UTF-8 would need locale-gen at boot).
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

install-if-changed - /etc/cloud/cloud.cfg.d/90-bakery.cfg root:root 0644 <<'CONF'
# bakery: the golden image is complete; first boot only writes the node bundle.
ssh_genkeytypes: [ed25519, ecdsa]
package_update: false
package_upgrade: false
package_reboot_if_required: false
locale: C.UTF-8
# No GRUB in these images (extlinux, or the cloud's own boot): skip the debconf work (~1.6 s).
grub_dpkg:
  enabled: false
CONF
install-if-changed - /etc/default/locale root:root 0644 <<'CONF'
LANG=C.UTF-8
CONF
