"""``hbpn serve``: a local web page and HTTP API for upscaling."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from hbpn.cli._args import tile, whole_number
from hbpn.defaults import DEFAULT_PRECISION, DEFAULT_TILE, RUN_PRECISIONS

DEFAULT_PORT = 8000


def _size_mb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megabytes, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of megabytes, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run a local web page and HTTP API for upscaling",
        description="Run a small web service: a page to drop an image on and compare before/after, "
        "POST /api/upscale, GET /api/health and /openapi.json. Listens on localhost only unless --host says "
        "otherwise. Stop it with Ctrl+C.",
        epilog="Examples: hbpn serve -m weights.safetensors             # then open http://127.0.0.1:8000/\n"
        "          hbpn serve -m default -m real --port 9000\n"
        "          curl -F image=@photo.png -F scale=2 http://127.0.0.1:8000/api/upscale -o photo_x2.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on; 0 picks a free one (default: {DEFAULT_PORT})",
    )
    p.add_argument(
        "-m",
        "--model",
        action="append",
        dest="models",
        metavar="MODEL",
        help="shipped weights name or .safetensors file to offer; repeat to offer several, the first is the "
        "default (default: the shipped 'default' weights)",
    )
    p.add_argument("--max-upload-mb", type=_size_mb, default=20.0, help="largest upload in MiB (default: 20)")
    p.add_argument(
        "--max-pixels",
        type=whole_number(1),
        default=8_000_000,
        help="largest result in pixels, width x height after upscaling (default: 8000000)",
    )
    p.add_argument(
        "--queue",
        type=whole_number(0),
        default=4,
        help="requests that may wait per model while one runs; more get 503 with Retry-After (default: 4)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument(
        "--tile",
        type=tile,
        default=DEFAULT_TILE,
        help=f"tile edge in output pixels, 0 for whole images, or 'auto' to fit free memory (default: {DEFAULT_TILE})",
    )
    p.add_argument(
        "--precision",
        choices=RUN_PRECISIONS,
        default=DEFAULT_PRECISION,
        help="arithmetic on the device; auto: bf16 on a CPU with native bf16 units, else fp32 (default: auto)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default: info)",
    )
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so a busy port is a one-line error before anything starts."""
    from hbpn.errors import HBPNError

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: quick restarts
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HBPNError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None
    return sock


def run(args: argparse.Namespace) -> int:
    from hbpn.errors import HBPNError

    try:
        import uvicorn

        from hbpn.serve.app import LOCAL_HOSTS, create_app
        from hbpn.serve.jobs import ServeLimits, load_models
        from hbpn.serve.protocol import server_config
    except ModuleNotFoundError as exc:
        raise HBPNError(f"hbpn serve needs {exc.name}: pip install 'hbpn[serve]'") from None

    if not 0 <= args.port <= 65535:
        raise HBPNError(f"--port must be between 0 and 65535, got {args.port}")
    limits = ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels, queue=args.queue
    )
    models = load_models(args.models or ["default"], device=args.device)
    # On a loopback address only this machine's own names are answered (no DNS rebinding); on
    # 0.0.0.0 or a network address, other machines use names this process cannot know.
    hosts = [*LOCAL_HOSTS, args.host] if _is_loopback(args.host) else ["*"]
    app = create_app(models, limits, tile=args.tile, precision=args.precision, allowed_hosts=hosts)
    sock = _listen(args.host, args.port)
    port = sock.getsockname()[1]  # --port 0 picks a free one
    if not _is_loopback(args.host):
        print(
            f"hbpn serve: warning: listening on {args.host}, so other machines can use this service; "
            "it has no authentication",
            file=sys.stderr,
        )
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    if args.host in ("0.0.0.0", "::"):
        url_host = "127.0.0.1"  # every address: the loopback one works from here
    print(f"hbpn serve: models {', '.join(models)}; open http://{url_host}:{port}/", file=sys.stderr)
    config = server_config(app, host=args.host, port=port, log_level=args.log_level)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
