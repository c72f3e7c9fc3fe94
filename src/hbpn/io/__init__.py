"""hbpn.io."""
