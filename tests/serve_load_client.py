"""Helper clients for tests/serve_load.sh, on loopback only, each bounded in time.

slow PORT SECONDS N_SAME N_MANY: N_SAME connections from 127.0.0.2, which send their
  request line at once, and N_MANY from 127.0.1.1, 127.0.1.2, ... (one each), which
  do not, to 127.0.0.1:PORT, all sending the rest of a request's header a byte at a
  time, one byte every 2 s, and reconnecting when closed, until
  SECONDS have passed. Prints: slow connections=N closed_by_server=N refused=N.
normal PORT COUNT: COUNT small requests one after the other; prints
  normal ok=N of=COUNT max_latency=S.
"""
import socket, sys, time, http.client, json, selectors

def slow(port, seconds, n_same, n_many):
    sources = ["127.0.0.2"] * n_same + ["127.0.1.%d" % (i + 1) for i in range(n_many)]
    header = b"PUT /api HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: " + b"x" * 200
    end = time.time() + seconds
    conns = {}  # source index -> (socket, bytes sent)
    made = closed = refused = 0
    def connect(i):
        nonlocal made, refused
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            s.bind((sources[i], 0))
            s.connect(("127.0.0.1", port))
        except OSError:
            refused += 1
            s.close()
            return
        s.setblocking(False)
        made += 1
        line = 19 if i < n_same else 0  # b"PUT /api HTTP/1.1\r\n"
        if line:
            s.send(header[:line])
        conns[i] = [s, line]
    for i in range(len(sources)):
        connect(i)
    while time.time() < end:
        for i in list(conns):
            s, sent = conns[i]
            try:
                if s.recv(1, socket.MSG_PEEK) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
                s.close()
                del conns[i]
                continue
            try:
                s.send(header[sent % len(header):sent % len(header) + 1])
                conns[i][1] += 1
            except OSError:
                closed += 1
                s.close()
                del conns[i]
        for i in range(len(sources)):
            if i not in conns and time.time() < end:
                connect(i)
        time.sleep(min(2, max(0, end - time.time())))
    for s, _ in conns.values():
        s.close()
    print("slow connections=%d closed_by_server=%d refused=%d" % (made, closed, refused))

def normal(port, count):
    ok, worst = 0, 0.0
    body = json.dumps({"prompts": ["the quick"], "tokens_to_generate": 4, "temperature": 0})
    for _ in range(count):
        start = time.time()
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            c.request("PUT", "/api", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            ok += r.status == 200
            c.close()
        except OSError:
            pass
        worst = max(worst, time.time() - start)
        time.sleep(0.1)
    print("normal ok=%d of=%d max_latency=%.3f" % (ok, count, worst))

if __name__ == "__main__":
    if sys.argv[1] == "slow":
        slow(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        normal(int(sys.argv[2]), int(sys.argv[3]))
