"""``kimi-cua guest --display :N --port P``: serve OSWorld's in-VM HTTP API on an X display (envs/osworld_guest.py)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from agent.cli.validate import port, positive_float


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("guest", help="serve OSWorld's in-VM HTTP API on an X display (no VM needed)",
                       description="Serve the HTTP API that OSWorld's VMs run on port 5000 (screenshot, execute, the "
                                   "/setup/* family, files, directories, windows, screen size, cursor, recording) on an "
                                   "X display, so OSWorld's own PythonController, SetupController and getters - and "
                                   "`kimi-cua run --env osworld --osworld-url URL` - drive this desktop. It runs "
                                   "whatever it is sent: keep it on 127.0.0.1 or a private network.")
    p.add_argument("--display", default=os.environ.get("DISPLAY"), help="X display to serve (default: $DISPLAY)")
    p.add_argument("--port", type=port, default=5000, help="TCP port (default 5000, as in OSWorld's VMs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--home", type=Path, default=Path.home(),
                   help="HOME of the commands it runs; '~' in paths means it (default: your HOME)")
    p.add_argument("--home-alias", metavar="DIR",
                   help="a path mapped onto --home, e.g. /home/user (the VM user's home OSWorld's tasks name)")
    p.add_argument("--open-timeout", type=positive_float, default=120.0,
                   help="seconds /setup/open_file waits for the file's window (default 120)")
    p.add_argument("--app-output", action="store_true",
                   help="let launched programs print to this command's stderr (default: their output is discarded)")
    p.set_defaults(handler=run_guest)


def run_guest(args: argparse.Namespace) -> int:
    from envs.osworld_guest import GuestConfig, GuestServer

    if not args.display:
        print("kimi-cua guest: no X display: pass --display :N or set DISPLAY", file=sys.stderr)
        return 2
    config = GuestConfig(display=args.display, home=args.home.absolute(), home_alias=args.home_alias,
                         open_timeout=args.open_timeout,
                         app_output=args.app_output)
    try:
        server = GuestServer(config, host=args.host, port=args.port)
    except OSError as exc:
        print(f"kimi-cua guest: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"kimi-cua guest: serving OSWorld's API for display {args.display} on {server.base_url} "
          f"(HOME {config.home})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":  # python -m agent.cli.guest ...: the guest alone, without loading every command
    _parser = argparse.ArgumentParser(prog="kimi-cua")
    register(_parser.add_subparsers())
    _args = _parser.parse_args(["guest", *sys.argv[1:]])
    sys.exit(_args.handler(_args))
