"""hbpn.eval."""
