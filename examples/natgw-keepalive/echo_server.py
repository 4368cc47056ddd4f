"""The `echo` internet host's command (examples/natgw-keepalive/lab.toml): a line echo server.

Listens on the host's address (HYPERPLANE_HOST_IPV4), port 7000 (ECHO_PORT). For every line a
client sends it answers one line: ``echo LINE from ADDR:PORT``, ADDR:PORT being the source the
server saw (the NAT gateway's Elastic IP and the port it chose, never the function's address).
It never sends anything unasked and never enables TCP keep-alive itself, so an idle connection
stays silent in both directions: only the client's keep-alive probes can refresh the NAT
gateway's entry. Connections are logged on stdout (the lab's hosts/echo.log). Stdlib only.
"""
import os
import socketserver
import sys


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        peer = "%s:%d" % self.client_address[:2]
        print(f"connection from {peer}", flush=True)
        try:
            for line in self.rfile:
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                self.wfile.write(f"echo {text} from {peer}\n".encode())
        except ConnectionError as e:
            print(f"connection from {peer}: {type(e).__name__}: {e}", flush=True)
            return
        print(f"connection from {peer} closed", flush=True)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    host = os.environ.get("HYPERPLANE_HOST_IPV4", "0.0.0.0")
    port = int(os.environ.get("ECHO_PORT", "7000"))
    with Server((host, port), Echo) as srv:
        print(f"echo server on {host}:{port}", flush=True)
        srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
