#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/seed-*) from the messages
the decoder tests captured from a real PostgreSQL (crates/decode/tests/fixtures/captured.txt)
and from examples the other tests use. Run it again after the fixtures change."""

import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
CAPTURED = os.path.join(ROOT, "..", "crates", "decode", "tests", "fixtures", "captured.txt")


def captured(plugin):
    out = []
    with open(CAPTURED, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 1)
            if len(parts) == 2 and parts[0] == plugin:
                out.append(bytes.fromhex(parts[1]) if plugin == "pgoutput" else parts[1].encode())
    return out


def framed(messages):
    return b"".join(struct.pack(">H", len(m)) + m for m in messages)


def write(target, seeds):
    directory = os.path.join(ROOT, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.startswith("seed-"):
            os.remove(os.path.join(directory, name))
    for i, seed in enumerate(seeds):
        with open(os.path.join(directory, f"seed-{i:03}"), "wb") as f:
            f.write(seed)


def backend(tag, body):
    return tag + struct.pack(">I", len(body) + 4) + body


EVENTS = [
    b'{"table_name":"public.t","action":"U","old":{"id":1,"a":"x"},"new":{"id":1,"a":"y","n":1.50},"diff":{"a":"y"},"id":{"id":1},"lsn":"0/16B3748","xid":750,"commit_time":"2026-11-23T10:00:00Z","seq":0}',
    b'{"table_name":"public.pair","action":"I","old":{},"new":{"a":2,"b":"k"},"diff":{"a":2,"b":"k"},"id":{"b":"k","a":2},"lsn":"0/16B3748","xid":751,"commit_time":"2026-11-23T10:00:00Z","seq":1,"context":{"uid":42}}',
    b'{"table_name":"public.t","action":"T","old":{},"new":{},"diff":{},"id":null,"lsn":"0/1","xid":1,"commit_time":"2026-11-23T10:00:00Z","seq":2}',
]

for plugin, target in [("pgoutput", "decode_pgoutput"), ("wal2json", "decode_wal2json")]:
    messages = captured(plugin)
    write(target, [framed(messages)] + [framed([m]) for m in messages])

wire = []
for payload in captured("pgoutput"):
    xlog = b"w" + struct.pack(">QQq", 0x16B3748, 0x16B3800, 0) + payload
    wire.append(backend(b"d", xlog))
wire.append(backend(b"d", b"k" + struct.pack(">Qq", 0x16B3800, 0) + b"\x01"))
wire.append(backend(b"c", b""))
wire.append(backend(b"E", b"SERROR\x00C55000\x00Mreplication slot is active\x00\x00"))
wire.append(backend(b"N", b"SNOTICE\x00Mhello\x00\x00"))
write("replication_wire", [b"".join(wire)] + wire[:20])

heads = [
    b"GET /events?table=public.*&action=I,U&pk=1&columns=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 41\r\n\r\n",
    b"GET /events?table=public.pair&pk=2,k&granularity=field&consumer_id=d1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /events?last_event_id=9&access_token=abc HTTP/1.0\r\nAuthorization: Bearer x.y.z\r\n\r\n",
]
write("gateway_request", [h + b"\x00" + e for h in heads for e in EVENTS])

templates = [
    (b'{"to": "{{email}}", "subject": "Welcome {{name}}!", "n": "{{event.new.n}}"}', b'{"email": "a@b", "name": "Ann"}'),
    (b'"{base_url}/users/{{id}}?token={{secret.TOKEN}}"', b'{"id": "a/b c"}'),
    (b'"Bearer {{secret.TOKEN}} {{tags.0}} {{missing}}"', b'{"tags": ["x", {"y": 1}]}'),
    (b'["{{ a.b.c }}", {"k": "{{event.table_name}}"}, 3]', b'{"a": {"b": {"c": null}}}'),
]
write("action_template", [t + b"\x00" + p + b"\x00" + EVENTS[0] for t, p in templates])

stubs = []
for event in EVENTS:
    for limit in (40, 120, 200, 4000):
        stubs.append(struct.pack(">H", limit) + event)
write("event_stub", stubs)

write("amqp_url", [
    b"amqp://guest:guest@localhost:5672/%2f",
    b"amqps://app:p%40ss@mq.example.com/prod?heartbeat=10&connection_timeout=2500",
    b"amqps://u:p@[::1]:5671/v?auth_mechanism=external&certfile=/c.pem&keyfile=/k.pem&verify=verify_none",
    b"amqp://u:p@h/v?channel_max=64&frame_max=131072&server_name_indication=mq.internal",
])


def b64url(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=")


tokens = [
    # HS256 over {"sub":"ann","exp":4102444800,"pgevents":{"tables":["public.*"]}} with a wrong key.
    b64url(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64url(b'{"sub":"ann","exp":4102444800,"pgevents":{"tables":["public.*"]}}') + b".c2lnbmF0dXJl",
    # The header injection found by trying: a decoder's message quoted the alg.
    b64url(b'{"alg":"\\r\\nContent-Type: text/html\\r\\n\\r\\n<script>alert(1)</script>"}') + b"." + b64url(b'{"exp":1}') + b".x",
    b64url(b'{"alg":"RS256","kid":"\\u0000"}') + b"." + b64url(b'{"exp":9223372036854775807}') + b".x",
    b"not.a.token",
    b"",
]
write("gateway_token", tokens)

write("gateway_session", [
    b"GET /sessions/0b6f2c7e-43d2-4a4e-9a8a-57f3f5d1c2a1/events?last_event_id=5 HTTP/1.1\r\nHost: gw\r\nAuthorization: bearer a.b.c\r\n\r\n",
    b"GET http://gw:8080/sessions/0b6f2c7e43d24a4e9a8a57f3f5d1c2a1/events HTTP/1.1\r\nHost: gw:8080\r\nLast-Event-ID: 99\r\n\r\n",
    b"GET /sessions/x'%20OR%201=1/events HTTP/1.1\r\nHost: gw\r\nX-Consumer-Id: a\x1b[31mb\r\n\r\n",
    b"GET /sessions//events HTTP/1.0\r\n\r\n",
])
