"""The region lab (R16): rehearse a whole region on one Linux machine.

``kontur lab up`` turns an inventory into real hosts on this machine: every
node becomes a Debian 12 container (systemd-nspawn, systemd as PID 1, sshd)
in its own network namespace on a private bridge, every modality and MIS
endpoint of the inventory gets a namespace and an address of its own, and a
signed apt repository served on the bridge gives the hosts their packages as
a closed regional network would.  Nothing in the lab can reach anything but
the bridge (198.18.0.0/24).

Modules, each small:

``config``  paths and constants (lab dir, cache dir, bridge, network)
``plan``    pure: inventory -> lab addresses, namespace and link names
``state``   the state file and the API other parts of kontur use
``proc``    running commands, detached processes, stopping them by PID
``net``     bridge, namespaces, veth links, the lab's nftables table
``base``    the cached base root filesystem (debootstrap)
``repo``    the cached, signed apt repository and its HTTP server
``hosts``   per-node root filesystems (overlayfs), boot, readiness
``mis``     the MLLP listener that plays a hospital's MIS
``ops``     up, down, status, cut, heal, send, mis-log
``cli``     the ``kontur lab`` commands
"""
