"""Where the lab keeps things, and the constants of its network.

The lab network is 198.18.0.0/24 (RFC 2544's benchmarking range, never
routed on the internet) and nothing else: the bridge holds .1, lab hosts and
the simulated outside world get .2 onwards.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

#: the only network the lab uses
NETWORK = ipaddress.IPv4Network("198.18.0.0/24")
#: the host's address on the bridge: the package repository is served here
BRIDGE_ADDRESS = "198.18.0.1"
#: the first address handed to an inventory address
FIRST_HOST = 2
#: the bridge the lab creates (interface names have at most 15 characters)
BRIDGE = "kontur-lab"
#: the lab's nftables table (inet family)
NFT_TABLE = "kontur_lab"
#: TCP port of the package repository on the bridge address
REPO_PORT = int(os.environ.get("KONTUR_LAB_REPO_PORT", "8765"))
#: Debian release of the lab hosts
SUITE = "bookworm"
#: packages debootstrap puts into the base: systemd, sshd and Python, and sudo (an operator
#: who is not root deploys through it, as on a production host)
BASE_INCLUDE = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2", "sudo")
#: seconds to wait for every host's sshd after boot
BOOT_TIMEOUT = float(os.environ.get("KONTUR_LAB_BOOT_TIMEOUT", "180"))
#: seconds a container gets to power off after SIGTERM before SIGKILL
STOP_TIMEOUT = float(os.environ.get("KONTUR_LAB_STOP_TIMEOUT", "30"))
#: where hosts find the repository's signing key (deploys install it there)
HOST_KEYRING = "/etc/apt/keyrings/kontur-lab.gpg"


def lab_dir() -> Path:
    """The running lab's directory: state file, keys, host root filesystems, logs."""
    return Path(os.environ.get("KONTUR_LAB_DIR") or "/var/lib/kontur/lab")


#: which lab directory holds the lab that owns this machine's lab network (one at a
#: time: the bridge, 198.18.0.0/24 and the kl-* names are machine-wide); in /run, so
#: it goes with a reboot, like the network it speaks for
OWNER_FILE = Path("/run/kontur-lab.owner")


def cache_dir() -> Path:
    """Cached between labs and runs: the base root filesystem and the apt repository."""
    return Path(os.environ.get("KONTUR_LAB_CACHE") or "/var/cache/kontur/lab")


def state_file() -> Path:
    return lab_dir() / "state.json"
