"""A TCP proxy a test controls, to cut a service off from the shared broker or database
without stopping them (other helpers' tests use them too).

    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{proxy.port}/db"
    proxy.stop()    # every connection through it is cut and new ones are refused
    proxy.start()   # the same port forwards again

    broker = TcpProxy(("127.0.0.1", 5672), amqp=True).start()
    broker.drop_confirms()  # publishes reach the broker; its confirms (basic.ack) never come back

Green (eventlet), like the services the tests run in-process.
"""
from __future__ import annotations

import socket

import eventlet

from tests import support


BASIC_ACK = (60, 80)  # AMQP 0-9-1 class and method ids of basic.ack, a publisher confirm


class TcpProxy:
    def __init__(self, upstream: tuple[str, int], port: int | None = None, amqp: bool = False):
        self.upstream = upstream
        self.port = port or support.free_port()
        self.amqp = amqp  # the server's replies are read frame by frame, so confirms can be dropped
        self._listener = None
        self._acceptor = None
        self._sockets: set = set()
        self._pumps: set = set()
        self._dropping_confirms = False
        self._hanging = False

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> "TcpProxy":
        if self._hanging:
            self.stop()
        if self._listener is None:
            self._listener = eventlet.listen(("127.0.0.1", self.port), reuse_addr=True)
            self._acceptor = eventlet.spawn(self._accept, self._listener)
        return self

    def drop_confirms(self) -> None:
        """Until stop(): forward everything except the broker's publisher confirms (amqp=True)."""
        assert self.amqp, "only an AMQP proxy reads frames"
        self._dropping_confirms = True

    def hang(self) -> "TcpProxy":
        """Cut the open connections, then accept new ones and never answer on them (a wedged
        server or a network black hole: the case a client only survives with a timeout of
        its own). stop() or start() ends it."""
        self.stop()
        self._listener = eventlet.listen(("127.0.0.1", self.port), reuse_addr=True)
        self._acceptor = eventlet.spawn(self._accept, self._listener)
        self._hanging = True
        return self

    def stop(self) -> None:
        """Refuse new connections and cut the open ones (as a dead server or network would)."""
        self._dropping_confirms = False
        self._hanging = False
        listener, self._listener = self._listener, None
        if listener is not None:
            self._acceptor.kill()
            listener.close()
        # Kill the pumps before closing their sockets: a green thread left waiting on a closed
        # descriptor would trip eventlet when the number is reused by a later connection.
        for pump in list(self._pumps):
            pump.kill()
        self._pumps.clear()
        for sock in list(self._sockets):
            self._close(sock)

    def _close(self, sock) -> None:
        self._sockets.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            # Tracked at once: stop() may kill this acceptor while it connects upstream, and a
            # client socket it forgot would leave its client waiting for an answer for ever
            # (seen: a relay's connect that hung the service's stop).
            self._sockets.add(client)
            if self._hanging:
                continue  # held open, read by no one, until stop()
            try:
                server = eventlet.connect(self.upstream)
            except OSError:
                self._close(client)
                continue
            self._sockets.add(server)
            replies = self._pump_frames if self.amqp else self._pump
            pair = [eventlet.spawn(self._pump, client, server), eventlet.spawn(replies, server, client)]
            ended: list = []
            for pump in pair:
                self._pumps.add(pump)
                pump.link(self._pump_ended, pair, ended, client, server)

    def _pump_ended(self, pump, pair, ended, client, server) -> None:
        """One direction ended (EOF, or an error on either socket): end the other direction
        before either socket is closed. A green thread still waiting on a descriptor closed
        under it is never woken, and the number, reused by the next connection (libpq's
        socket for one), leaves that connection hanging (seen: a relay's connect waiting for
        ever, which hung the service's stop)."""
        self._pumps.discard(pump)
        if ended:  # the sibling's end, run by the kill below
            return
        ended.append(pump)
        for other in pair:
            if other is not pump:
                self._pumps.discard(other)
                other.kill()
        self._close(client)
        self._close(server)

    def _pump(self, source, target) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except (OSError, EOFError):  # cut by stop(), or by either end
            pass

    def _pump_frames(self, source, target) -> None:
        """The broker's side of an AMQP connection, whole frames at a time (type, channel, size,
        payload, end octet), leaving out basic.ack while confirms are being dropped."""
        pending = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                pending += data
                out = []
                while len(pending) >= 7:
                    end = 7 + int.from_bytes(pending[3:7], "big") + 1
                    if len(pending) < end:
                        break
                    frame, pending = pending[:end], pending[end:]
                    method = (int.from_bytes(frame[7:9], "big"), int.from_bytes(frame[9:11], "big"))
                    if not (self._dropping_confirms and frame[0] == 1 and method == BASIC_ACK):
                        out.append(frame)
                if out:
                    target.sendall(b"".join(out))
        except (OSError, EOFError):
            pass
