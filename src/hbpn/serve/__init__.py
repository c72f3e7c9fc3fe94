"""``hbpn serve``: the local web page and HTTP API."""

from hbpn.serve.app import LOCAL_HOSTS, create_app

__all__ = ["LOCAL_HOSTS", "create_app"]
