"""hbpn.ops."""
