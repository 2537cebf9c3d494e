"""Drives a CRI streaming URL with the official Kubernetes Python client's
websocket code (`kubernetes.stream.ws_client`, PyPI `kubernetes`): the
channel protocol it speaks to the API server, here spoken to wasmrun's
streaming server directly. Prints one JSON object.

  k8s_stream.py exec URL [STDIN]      run an exec; send STDIN (then close it)
  k8s_stream.py leave URL             connect to an exec, read its first
                                      output, and go away without a word
  k8s_stream.py portforward URL PORT DATA
                                      forward PORT; send DATA, read until the
                                      pod's end closes
  k8s_stream.py portforward-error URL PORT
                                      forward PORT, send nothing; what its
                                      error channel says
"""
import json
import socket
import sys

from kubernetes.client import Configuration
from kubernetes.stream.ws_client import (
    ERROR_CHANNEL, STDERR_CHANNEL, STDOUT_CHANNEL, PortForward, WSClient, create_websocket)


def ws_url(url):
    return "ws" + url[len("http"):]


def run_exec(url, stdin):
    client = WSClient(Configuration(), ws_url(url), None, True)
    if stdin is not None:
        client.write_stdin(stdin)
        if client.subprotocol == "v5.channel.k8s.io":
            client.close_channel(0)
    client.run_forever(timeout=60)
    channels = client._channels
    return {
        "protocol": client.subprotocol,
        "stdout": channels.get(STDOUT_CHANNEL, ""),
        "stderr": channels.get(STDERR_CHANNEL, ""),
        "error": channels.get(ERROR_CHANNEL, ""),
        "returncode": client.returncode,
    }


def leave(url):
    client = WSClient(Configuration(), ws_url(url), None, True)
    first = ""
    for _ in range(10):  # the first message is the empty one that says the streams are ready
        first = client.read_stdout(timeout=30)
        if first:
            break
    client.sock.sock.shutdown(socket.SHUT_RDWR)
    client.sock.sock.close()
    return {"protocol": client.subprotocol, "first": first}


def port_forward(url, port, data):
    forward = PortForward(create_websocket(Configuration(), ws_url(url)), [port])
    sock = forward.socket(port)
    sock.settimeout(60)
    sock.sendall(data.encode())
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sock.close()
    return {"received": received.decode(errors="replace"), "error": forward.error(port)}


def port_forward_error(url, port):
    """Forwards PORT without sending anything; returns what its error channel said once the session ends."""
    import time
    forward = PortForward(create_websocket(Configuration(), ws_url(url)), [port])
    deadline = time.monotonic() + 60
    while forward.connected and forward.error(port) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"error": forward.error(port)}


def main():
    command, url = sys.argv[1], sys.argv[2]
    try:
        if command == "exec":
            result = run_exec(url, sys.argv[3] if len(sys.argv) > 3 else None)
        elif command == "leave":
            result = leave(url)
        elif command == "portforward-error":
            result = port_forward_error(url, int(sys.argv[3]))
        elif command == "portforward":
            result = port_forward(url, int(sys.argv[3]), sys.argv[4])
        else:
            sys.exit("unknown command %r" % command)
    except Exception as error:  # the failure is the test's to judge
        result = {"exception": "%s: %s" % (type(error).__name__, error)}
    print(json.dumps(result))


main()
