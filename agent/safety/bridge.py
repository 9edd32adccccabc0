"""TCP ports of a sandbox without network, reachable from the host: the bridge of ``eval local``'s sandbox.

``eval local`` runs our guest (OSWorld's in-VM API) and everything it starts inside bubblewrap with
``--unshare-net``: task programs and task commands have a loopback of their own and no other network, so they cannot
reach the host's services (the model server, other guests, anything on 127.0.0.1) nor the internet. OSWorld's worker
still has to reach the guest's HTTP port, and the Chrome (CDP) and VLC ports the tasks' apps open, and it does so
through a unix socket per port in a folder bound into the sandbox::

    worker -> 127.0.0.1:P (host)  --PortBridge-->  FOLDER/P.sock  --inside half-->  127.0.0.1:P (sandbox loopback)

The inside half is this module run as a wrapper inside the sandbox
(``python -m agent.safety.bridge FOLDER P1,P2 -- COMMAND...``): it listens on the unix sockets, starts COMMAND and
exits with its exit code. Only connections from the host into the sandbox's ports exist; nothing inside can open a
connection out (the sockets in FOLDER are served by the inside half, never connected to by it).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path


def socket_path(folder: Path | str, port: int) -> str:
    return os.path.join(str(folder), f"{port}.sock")


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides have finished; then close both."""

    def one_way(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    back = threading.Thread(target=one_way, args=(b, a), daemon=True)
    back.start()
    one_way(a, b)
    back.join()
    for s in (a, b):
        try:
            s.close()
        except OSError:
            pass


def _serve(listener: socket.socket, connect: Callable[[], socket.socket]) -> None:
    """Accept on ``listener`` until it is closed; each connection is joined to a fresh ``connect()``."""

    def handle(client: socket.socket) -> None:
        try:
            upstream = connect()
        except OSError:
            client.close()  # nothing listens on the other side (yet): the caller sees a closed connection
            return
        _pump(client, upstream)

    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(client,), daemon=True).start()


def _connect_unix(path: str) -> socket.socket:
    """Connect to the socket file ``path`` itself, never to where a symlink there points: the folder is writable
    inside the sandbox, and a symlink to one of the host's sockets must not become a way out."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a socket")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(f"/proc/self/fd/{fd}")
        except OSError:
            s.close()
            raise
        return s
    finally:
        os.close(fd)


class PortBridge:
    """The host half: ``127.0.0.1:P`` on the host for each port, joined to ``FOLDER/P.sock`` inside the sandbox.

    ``ports``: the ports that must be bridged (a bind failure raises OSError); ``optional``: ports bridged when
    they are free on the host (Chrome's and VLC's, used by some tasks only). ``folder`` is a short host folder
    (unix socket paths are limited to 107 bytes) to bind into the sandbox at the same path (``Sandbox.writable``);
    ``uid``: the sandbox's uid, which owns it when kimi-cua runs as root.
    """

    def __init__(self, ports: Iterable[int], optional: Iterable[int] = (), *, uid: int | None = None) -> None:
        self.ports = list(dict.fromkeys(ports))
        self.optional = [p for p in dict.fromkeys(optional) if p not in self.ports]
        self.folder = Path(tempfile.mkdtemp(prefix="kca-bridge-"))
        if uid is not None and os.geteuid() == 0:
            os.chown(self.folder, uid, uid)  # as root, programs inside run as the sandbox's uid: it makes the sockets
        self.bridged: list[int] = []
        self.skipped: dict[int, str] = {}
        self._listeners: list[socket.socket] = []

    def start(self) -> "PortBridge":
        try:
            for port in self.ports + self.optional:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    listener.bind(("127.0.0.1", port))
                except OSError as exc:
                    listener.close()
                    if port in self.ports:
                        raise
                    self.skipped[port] = str(exc)
                    continue
                listener.listen(64)
                self._listeners.append(listener)
                self.bridged.append(port)
                path = socket_path(self.folder, port)

                def connect(path: str = path) -> socket.socket:
                    return _connect_unix(path)

                threading.Thread(target=_serve, args=(listener, connect), daemon=True,
                                 name=f"kimi-cua-bridge-{port}").start()
        except BaseException:
            self.close()
            raise
        return self

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` preceded by the inside half, which serves the unix sockets in the sandbox."""
        return [sys.executable, "-m", "agent.safety.bridge", str(self.folder),
                ",".join(str(p) for p in self.bridged), "--", *argv]

    def close(self) -> None:
        for listener in self._listeners:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        self._listeners.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "PortBridge":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect_tcp(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(None)  # a request may take minutes (OSWorld's /execute allows 120 s)
    return s


def inside(folder: str, ports: Sequence[int], argv: Sequence[str]) -> int:
    """The inside half: serve ``folder/P.sock`` -> ``127.0.0.1:P`` (this namespace's loopback), run ``argv``."""
    for port in ports:
        path = socket_path(folder, port)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        threading.Thread(target=_serve, args=(listener, lambda port=port: _connect_tcp(port)), daemon=True).start()
    child = subprocess.Popen(list(argv))

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[2] != "--":
        print("usage: python -m agent.safety.bridge FOLDER PORT[,PORT...] -- COMMAND...", file=sys.stderr)
        return 2
    ports = [int(p) for p in args[1].split(",") if p]
    return inside(args[0], ports, args[3:])


if __name__ == "__main__":
    sys.exit(main())
