"""hbpn.convert."""
