"""An independent QUIC client (aioquic, not quinn) that throws bad frames at one Cairn node.

Driven by cli/tests/hostile_client.rs, which starts real node processes, hands this script the
node's address, the dev cluster's client certificate and the protocol facts it needs (version,
peer tag, a valid Ping frame), and checks afterwards that every node is alive and serving.

Over connections that present a valid client certificate it sends, in order:
  - the frame that once overflowed a node's stack: a Forward nested 200,000 deep;
  - frames announcing more than the frame limit, or 0 bytes, or a body that is cut short;
  - seeded random frames (a plausible header and random bytes) and random bytes;
  - many half-sent streams, each announcing the largest frame and sending a few bytes, kept
    open while a new connection asks for a Ping.
It prints one JSON object: what each stream got back (answer bytes in hex, or how it ended),
and the Ping's answer. A stream the node resets or answers is fine; the node must stay up.
"""

import argparse
import asyncio
import json
import random
import ssl
import struct
import sys

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

# How long one answer may take on a loaded 2-core machine.
ANSWER_TIMEOUT_S = 30.0
# Depth of the nested Forward (the crash of issue 12 needed about this many).
NESTED_DEPTH = 200_000


def configuration(args):
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[args.alpn],
        server_name=args.server_name,
        verify_mode=ssl.CERT_REQUIRED,
        idle_timeout=60.0,
    )
    config.load_verify_locations(args.ca)
    config.load_cert_chain(args.cert, args.key)
    return config


async def exchange(protocol, data, eof=True):
    """Sends `data` on a new stream and reads until the node ends its side."""
    reader, writer = await protocol.create_stream()
    writer.write(data)
    if eof:
        writer.write_eof()
    try:
        answer = await asyncio.wait_for(reader.read(), ANSWER_TIMEOUT_S)
        return {"answer": answer.hex()[:200], "bytes": len(answer)}
    except asyncio.TimeoutError:
        return {"ended": "no answer within %ss" % ANSWER_TIMEOUT_S}
    except Exception as e:  # a reset stream or a closed connection
        return {"ended": type(e).__name__ + ": " + str(e)}


def frame(body):
    return struct.pack(">I", len(body)) + body


async def hostile(args, config):
    version = struct.pack(">H", args.version)
    out = {}
    async with connect(args.host, args.port, configuration=config) as protocol:
        nested = version + bytes([args.peer_tag, 0x01]) * NESTED_DEPTH + b"\x00"
        out["nested_forward"] = await exchange(protocol, frame(nested))
        out["over_the_limit"] = await exchange(
            protocol, struct.pack(">I", args.frame_max + 1) + b"\x00" * 64
        )
        out["largest_length"] = await exchange(protocol, b"\xff\xff\xff\xff" + b"\x01" * 16)
        out["empty_frame"] = await exchange(protocol, struct.pack(">I", 0))
        out["cut_short"] = await exchange(protocol, struct.pack(">I", 100) + version + b"\x01")
        out["header_cut_short"] = await exchange(protocol, b"\x00\x00")
        out["wrong_version"] = await exchange(protocol, frame(b"\xff\xff" + b"\x00"))
    rng = random.Random(args.seed)
    answered = 0
    async with connect(args.host, args.port, configuration=config) as protocol:
        for i in range(args.random_frames):
            if i % 2 == 0:
                body = version + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
                data = frame(body)
            else:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))
            got = await exchange(protocol, data)
            answered += "answer" in got
    out["random"] = {"sent": args.random_frames, "answered": answered}
    return out


async def half_sent_then_ping(args, config):
    """Opens the half-sent streams, then asks for a Ping on a fresh connection while they are
    held; returns the Ping's answer and how many half-sent streams went out."""
    header = struct.pack(">I", args.frame_max)
    connections = []
    sent = 0
    try:
        for _ in range(args.half_sent_connections):
            cm = connect(args.host, args.port, configuration=config)
            protocol = await cm.__aenter__()
            connections.append(cm)
            for _ in range(args.half_sent_per_connection):
                _, writer = await protocol.create_stream()
                writer.write(header + b"\x00" * 10)
                sent += 1
            await asyncio.sleep(0)
        # Let the node see every stream before the ping.
        await asyncio.sleep(0.5)
        async with connect(args.host, args.port, configuration=config) as protocol:
            ping = await exchange(protocol, bytes.fromhex(args.ping))
    finally:
        for cm in connections:
            await cm.__aexit__(None, None, None)
    return {"half_sent": sent, "ping_while_held": ping}


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--alpn", required=True)
    parser.add_argument("--server-name", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--peer-tag", type=int, required=True)
    parser.add_argument("--frame-max", type=int, required=True)
    parser.add_argument("--ping", required=True, help="a valid Ping frame, in hex")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--random-frames", type=int, default=200)
    parser.add_argument("--half-sent-connections", type=int, default=4)
    parser.add_argument("--half-sent-per-connection", type=int, default=250)
    args = parser.parse_args()
    config = configuration(args)
    out = await hostile(args, config)
    out.update(await half_sent_then_ping(args, config))
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    asyncio.run(main())
