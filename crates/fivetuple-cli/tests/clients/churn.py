# An unmodified-style client: N sequential HTTP calls with http.client, each
# on a new connection that the client closes first (so TIME_WAIT is on this
# side). Prints the local port of each call, or "ERR <errno>" when it failed.
import errno, http.client, sys

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        print(conn.sock.getsockname()[1])
    except OSError as e:
        print("ERR", errno.errorcode.get(e.errno, e.errno))
    finally:
        conn.close()
