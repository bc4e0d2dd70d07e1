"""redis-py against a Cairn node's RESP port over TLS: the siblings loop, pipelining and RESP3.

Run by cli/tests/frontends.rs as: redis_py.py HOST PORT CA CERT KEY. Exits non-zero with a
message on the first thing that is not as expected; prints "ok" when everything is.
"""

import sys

import redis


def connect(host, port, ca, cert, key, protocol):
    return redis.Redis(
        host=host,
        port=port,
        ssl=True,
        ssl_ca_certs=ca,
        ssl_certfile=cert,
        ssl_keyfile=key,
        protocol=protocol,
        socket_timeout=30,
    )


def check(what, got, expected):
    if got != expected:
        sys.exit(f"{what}: got {got!r}, expected {expected!r}")


def main():
    host, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

    # RESP2: two blind writes make two siblings; a write with their context resolves them.
    r = connect(host, port, ca, cert, key, 2)
    check("PING", r.ping(), True)
    check("SET v1", r.set("py-k", "v1"), True)
    check("SET v2", r.set("py-k", "v2"), True)
    reply = r.get("py-k")
    if not isinstance(reply, list) or len(reply) != 3:
        sys.exit(f"GET with two siblings: expected [v, v, context], got {reply!r}")
    check("sibling values", sorted(reply[:2]), [b"v1", b"v2"])
    context = reply[-1].decode()
    check("SET with context", r.execute_command("SET", "py-k", "v3", "CONTEXT", context), True)
    check("GET after resolving", r.get("py-k")[:-1], [b"v3"])
    check("GET ONE", r.execute_command("GET", "py-k", "ONE"), b"v3")
    check("EXISTS", r.exists("py-k", "py-missing"), 1)
    check("DEL", r.delete("py-k"), 1)
    check("GET after DEL", len(r.get("py-k")), 1)

    # Pipelining: 200 commands sent before any answer is read, answered in order.
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"py-p{i}", f"value-{i}")
        pipe.get(f"py-p{i}")
    answers = pipe.execute()
    for i in range(100):
        check(f"pipelined SET {i}", answers[2 * i], True)
        check(f"pipelined GET {i}", answers[2 * i + 1][:-1], [f"value-{i}".encode()])

    info = r.info()
    if info.get("node") is None or int(info.get("writes", 0)) < 100:
        sys.exit(f"INFO lacks the node's figures: {info!r}")
    try:
        r.execute_command("FLUSHALL")
        sys.exit("FLUSHALL was not refused")
    except redis.ResponseError as e:
        if "unknown command" not in str(e):
            sys.exit(f"FLUSHALL: unexpected error {e}")

    # RESP3: HELLO 3 on connect, maps and nulls in RESP3 form.
    r3 = connect(host, port, ca, cert, key, 3)
    check("RESP3 PING", r3.ping(), True)
    hello = r3.execute_command("HELLO", "3")
    check("HELLO proto", hello.get(b"proto", hello.get("proto")), 3)
    check("RESP3 SET", r3.set("py-r3", "x"), True)
    check("RESP3 GET", r3.get("py-r3")[:-1], [b"x"])
    check("RESP3 GET ONE of a missing key", r3.execute_command("GET", "py-none", "ONE"), None)
    print("ok")


if __name__ == "__main__":
    main()
