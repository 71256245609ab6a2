"""Write the small seed corpora in bench/fuzz/corpus/<harness>/ (run once; the files are committed).

Seeds are starting points, not tests: each is a typical valid input (or a classic near miss)
so that libFuzzer starts from the interesting structure instead of from empty input.
"""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from quictund.tokens.signed import sign  # noqa: E402
from tests.quic_packets import client_initial_datagram  # noqa: E402

SEEDS: dict[str, list[bytes]] = {
    "wire": [b"tcp:10.0.0.1:22", b"\x01" + b"unix:/run/app.sock".ljust(512, b"\x00") + b"data"],
    "cleartext": [
        b"\x00tcp:10.0.0.1:22",
        b"\x00unix:/run/app.sock",
        b"\x00TCP6:[2001:db8::1]:443",
        b"\x01" + base64.b64encode(b"tcp:127.0.0.1:6379"),
        b"\x02tcp4:h.example:1",
    ],
    "signed": [
        b"\x00"
        + sign(
            "tcp:10.0.0.5:22", secret=b"fuzz-secret-" * 4, audience="edge", expires_at=1_800_000_060
        ).encode(),
        b'\x03{"a":"edge","d":"tcp:10.0.0.5:22","e":1800000060}',
        b'\x03{"a":"edge","d":"unix:/x","e":1e99,"e":true}',
        b"\x00qt1.e30.AAAA",
        b"\x01\x00\x02\x07",
        b"\x02\x01\x01\x10\x41",
    ],
    "token_file": [
        (
            b"# ip token\n10.0.0.1 tcp:10.1.0.1:22\n10.0.0.0/24\ttcp:10.1.0.2:22 # c\r\n"
            b"[::1] unix:/run/a.sock\n@ tcp:10.1.0.3:80\n::ffff:10.0.0.9 tok\n"
        ),
        b"\xef\xbb\xbf10.0.0.1 a\n10.0.0.1 b\n10.0.0.2\n10.0.0.3 a b\nnot-an-ip tok\n",
    ],
    "http_reply": [b'{"token": "tcp:127.0.0.1:22"}', b'{"token": ""}', b"[]", b'{"token": 5}'],
    "config": [
        (HERE.parents[1] / "etc/quictun/client.toml").read_bytes(),
        (HERE.parents[1] / "etc/quictun/server.toml").read_bytes(),
        b'[[server]]\nname = "s"\nallow = ["tcp:10.0.0.0/8:22"]\n[log]\nlevel = "debug"\n',
        b'[[client]]\nname = "c"\nserver-endpoint = "127.0.0.1:7500"\ntoken-map = {"@" = "x"}\n',
    ],
    "addresses": [
        b"\x00tcp:127.0.0.1:22",
        b"\x01[::1]:0",
        b"\x00unix:/run/a.sock",
        b"\x00tcp6:[fe80::1%eth0]:1",
        b"\x00h.example:65535",
    ],
    "policy": [
        b"tcp:10.0.0.0/8:22\n\x16\x02\x00\x01\x01\x02\x00\x00",
        b"tcp:*:1-1024\nunix:/run/pg/*\ntcp:[::1]:*\n\x00\x50\x02\x02\x00",
        b"*\ntcp:127.0.0.0/8:80\ntcp:h.example:443\n\x02\x00\x01\x00/run/pg/../x",
    ],
    "classify": [
        b"\x01" + b"\x00" * 3 + b"\x40REDQ" + b"\x02\x00\x00\x00" * 5,
        b"\x01\x20SSH-2.0-OpenSSH_9.6\r\n\x00\x20SSH-2.0-OpenSSH_9.2p1\r\n",
        b"\x01\x60\x16\x03\x01\x00\x5a\x01\x00\x00\x56\x03\x03" + b"\x00" * 80,
    ],
    "api": [
        b"GET /tunnels HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /listeners HTTP/1.0\r\n\r\n",
        b"DELETE /tunnels/known HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        (
            b"POST /tunnels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        ),
        (
            b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        ),
    ],
    "quic_datagram": [
        b"\x00\x00\x04\xb0" + client_initial_datagram(),
        b"\x01\x00\x00\x20\x02\x00\x00\x00\x00\x00\x01\x00",  # frames: PING, ACK
        b"\x02\x01\x03\x10\x41\x20\x16\x00",
    ],
}


def write() -> None:
    for name, seeds in SEEDS.items():
        directory = HERE / "corpus" / name
        directory.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (directory / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)


if __name__ == "__main__":
    write()
