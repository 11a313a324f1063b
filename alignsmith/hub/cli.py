"""``alignsmith hub serve|start|stop|token``: run and administer the embedded Hub."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence


def _root_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=None,
                        help="Storage folder (default: $ALIGNSMITH_HUB_ROOT or ~/.cache/alignsmith/hub).")


def serve(argv: Sequence[str]) -> int:
    from alignsmith.hub.server import main

    return main(argv)


def start(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignsmith hub start",
                                     description="Start the embedded Hub in the background, or find the running one.")
    _root_arg(parser)
    args = parser.parse_args(argv)
    from alignsmith.hub.local import ensure_local_hub

    hub = ensure_local_hub(args.root)
    print(f"# embedded Hub for {hub.root} at {hub.url} (pid {hub.pid}); to point any client at it:")
    print(f"export HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1 HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 "
          f"HF_TOKEN={hub.token or ''}")
    return 0


def stop(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignsmith hub stop", description="Stop the background embedded Hub of a root.")
    _root_arg(parser)
    args = parser.parse_args(argv)
    from alignsmith.hub.local import stop_local_hub
    from alignsmith.hub.storage import default_root

    root = Path(args.root or default_root()).expanduser().resolve()
    pid = stop_local_hub(root)
    print(f"stopped the embedded Hub for {root} (pid {pid})" if pid else f"no embedded Hub is running for {root}")
    return 0


def token(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignsmith hub token", description="Create an access token for the embedded Hub.")
    _root_arg(parser)
    parser.add_argument("--name", required=True,
                        help="The user the token belongs to: whoami reports it and it is the default namespace "
                             "for new repos (letters, digits, '-', '_', '.').")
    parser.add_argument("--read", action="append", default=[], metavar="NAMESPACE",
                        help="Namespace the token may read privately ('*' for all); repeatable.")
    parser.add_argument("--write", action="append", default=[], metavar="NAMESPACE",
                        help="Namespace the token may write ('*' for all); repeatable.")
    args = parser.parse_args(argv)
    from alignsmith.hub.auth import create_token
    from alignsmith.hub.storage import default_root

    root = Path(args.root or default_root()).expanduser().resolve()
    print(create_token(root, args.name, read=args.read, write=args.write))
    return 0
