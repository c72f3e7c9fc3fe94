"""hbpn.pipeline."""
