"""The protocol classifier: quic-tun's Spice discriminator (bugs fixed), SSH and TLS, fuzzed."""

from __future__ import annotations

import json
import random
import ssl
import struct
import uuid
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quictund.classify import (
    DEFAULT_DETECTORS,
    LOOKAHEAD,
    Classifier,
    Detector,
    SpiceDetector,
    SshDetector,
    TlsDetector,
    Verdict,
    detectors_named,
)
from quictund.errors import ConfigError

Step = tuple[str, bytes]  # ("c", bytes the client app sent) or ("s", bytes the server app sent)

# ------------------------------------------------------------------------------ helpers


def replay(steps: Sequence[Step], chunk: int | None = None, **kwargs: object) -> Classifier:
    """Feed a conversation in order, each message cut into ``chunk``-sized pieces."""
    classifier = Classifier(**kwargs)  # type: ignore[arg-type]
    for side, data in steps:
        size = chunk or max(len(data), 1)
        for i in range(0, len(data), size):
            feed(classifier, side, data[i : i + size])
    return classifier


def interleave(steps: Sequence[Step], chunk: int) -> Classifier:
    """Feed both directions' bytes alternately, ``chunk`` at a time, ignoring message order."""
    client = b"".join(d for s, d in steps if s == "c")
    server = b"".join(d for s, d in steps if s == "s")
    classifier = Classifier()
    for i in range(0, max(len(client), len(server)), chunk):
        classifier.feed_server(server[i : i + chunk])
        classifier.feed_client(client[i : i + chunk])
    return classifier


def feed(classifier: Classifier, side: str, data: bytes) -> None:
    (classifier.feed_client if side == "c" else classifier.feed_server)(data)


def result(classifier: Classifier) -> tuple[bool, str, dict[str, str] | None]:
    return classifier.done, classifier.protocol, classifier.properties


def as_json(properties: dict[str, str] | None) -> str:
    return json.dumps(properties, separators=(",", ":"))


# ------------------------------------------------------------------------------ Spice wire

SESSION = bytes.fromhex("d0306d75")  # connection id 0x756d30d0, little-endian on the wire
SERVER_UUID = uuid.UUID("e548a827-8937-4047-a756-e56937017128")
SERVER_NAME = f"instance-{SERVER_UUID}"
README_MAIN = (
    '{"version":"2.2","sessionId":"d0306d75","channelType":"main",'
    '"serverName":"instance-e548a827-8937-4047-a756-e56937017128",'
    '"serverUUID":"e548a827-8937-4047-a756-e56937017128"}'
)
MAIN_CLIENT_ONLY = {"version": "2.2", "sessionId": "00000000", "channelType": "main"}
COMMON_CAPS = 0b1011  # AUTH_SELECTION, AUTH_SPICE, MINI_HEADER


def link_header(size: int) -> bytes:
    return b"REDQ" + struct.pack("<III", 2, 2, size)


def link_mess(channel: int, connection_id: bytes = b"\0\0\0\0", channel_id: int = 0) -> bytes:
    """SpiceLinkHeader + SpiceLinkMess with one common and one channel capability word."""
    mess = connection_id + struct.pack("<BBIII", channel, channel_id, 1, 1, 18)
    mess += struct.pack("<II", COMMON_CAPS, 0b1)
    return link_header(len(mess)) + mess


def link_reply(error: int = 0) -> bytes:
    """SpiceLinkHeader + SpiceLinkReply (error, 162-byte RSA key, caps)."""
    reply = struct.pack("<I", error) + bytes(range(162)) + struct.pack("<III", 1, 1, 178)
    reply += struct.pack("<II", COMMON_CAPS, 0b11)
    return link_header(len(reply)) + reply


def mini(kind: int, body: bytes) -> bytes:
    return struct.pack("<HI", kind, len(body)) + body


def main_init(session: bytes = SESSION) -> bytes:
    # session_id, display_channels_hint, mouse modes, current mode, agent, tokens, mm time, ram
    return mini(103, session + struct.pack("<7I", 1, 3, 2, 0, 10, 123456, 0))


def main_name(name: bytes, name_len: int | None = None) -> bytes:
    size = len(name) + 1 if name_len is None else name_len
    return mini(113, struct.pack("<I", size) + name + b"\0")


def main_uuid(value: uuid.UUID = SERVER_UUID) -> bytes:
    return mini(114, value.bytes)


def spice_main(*messages: bytes, result: int = 0) -> list[Step]:
    """A main-channel link exchange, as the tunnel sees it, then ``messages`` from the server."""
    return [
        ("c", link_mess(1)),
        ("s", link_reply()),
        ("c", struct.pack("<I", 1) + bytes(128)),  # auth mechanism SPICE, encrypted ticket
        ("s", struct.pack("<I", result) + b"".join(messages)),
        ("c", mini(104, b"")),  # SPICE_MSGC_MAIN_ATTACH_CHANNELS
    ]


MAIN_EXCHANGE = spice_main(main_init(), main_name(SERVER_NAME.encode()), main_uuid())


# ------------------------------------------------------------------------------ Spice tests


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_spice_main_channel_matches_quic_tun_readme(chunk: int | None) -> None:
    classifier = replay(MAIN_EXCHANGE, chunk)
    assert classifier.done
    assert classifier.protocol == "spice"
    assert as_json(classifier.properties) == README_MAIN


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_spice_main_channel_interleaved_chunks_agree(chunk: int) -> None:
    assert result(interleave(MAIN_EXCHANGE, chunk)) == result(replay(MAIN_EXCHANGE))


def test_spice_main_channel_is_partial_until_the_server_has_spoken() -> None:
    classifier = Classifier()
    classifier.feed_client(link_mess(1))
    assert not classifier.done
    assert classifier.protocol == "spice"
    assert classifier.properties == MAIN_CLIENT_ONLY
    for step in MAIN_EXCHANGE[1:]:
        feed(classifier, *step)
    assert as_json(classifier.properties) == README_MAIN


@pytest.mark.parametrize(
    ("channel", "name"),
    [(2, "display"), (3, "inputs"), (4, "cursor"), (5, "playback"), (6, "record"),
     (7, "tunnel"), (8, "smartcard"), (9, "usbredir"), (10, "port"), (11, "webdav"),
     (0, "unknown"), (12, "unknown"), (200, "unknown")],
)  # fmt: skip
def test_spice_other_channels_are_affirmed_from_the_client_alone(channel: int, name: str) -> None:
    classifier = replay([("c", link_mess(channel, SESSION, channel_id=3))], 1)
    assert classifier.done
    assert classifier.protocol == "spice"
    assert as_json(classifier.properties) == (
        f'{{"version":"2.2","sessionId":"d0306d75","channelType":"{name}"}}'
    )


def test_spice_version_is_hex_of_the_low_bytes_like_quic_tun() -> None:
    message = bytearray(link_mess(2, SESSION))
    message[4:12] = struct.pack("<II", 10, 0x1FF)
    classifier = replay([("c", bytes(message))])
    assert classifier.properties is not None
    assert classifier.properties["version"] == "a.ff"


def test_spice_needs_21_client_bytes() -> None:
    classifier = Classifier()
    classifier.feed_client(link_mess(2, SESSION)[:20])
    assert (classifier.done, classifier.protocol) == (False, "")
    classifier.feed_client(b"\x02")
    assert classifier.done and classifier.protocol == "spice"


def test_spice_name_len_zero_does_not_crash_and_omits_the_name() -> None:
    steps = spice_main(main_init(), main_name(b"", name_len=0), main_uuid())
    for chunk in (1, None):
        classifier = replay(steps, chunk)
        assert classifier.done
        assert classifier.properties == {
            "version": "2.2",
            "sessionId": "d0306d75",
            "channelType": "main",
            "serverUUID": str(SERVER_UUID),
        }


@pytest.mark.parametrize("name_len", [1, 3, 0xFFFFFFFF])
def test_spice_odd_name_lengths_are_clamped(name_len: int) -> None:
    classifier = replay(spice_main(main_init(), main_name(b"vm", name_len), main_uuid()))
    assert classifier.done
    assert classifier.properties is not None
    assert classifier.properties.get("serverName", "") in ("", "v", "vm")


def test_spice_unknown_messages_are_skipped_not_fatal() -> None:
    steps = spice_main(
        main_init(),
        mini(105, struct.pack("<I", 2)),  # SPICE_MSG_MAIN_MOUSE_MODE
        mini(101, bytes(40)),  # SPICE_MSG_MAIN_MIGRATE_BEGIN, whatever
        main_uuid(),
        mini(107, struct.pack("<I", 10)),  # SPICE_MSG_MAIN_AGENT_CONNECTED_TOKENS
        main_name(SERVER_NAME.encode()),
    )
    for chunk in (1, 7, None):
        classifier = replay(steps, chunk)
        assert classifier.done
        assert as_json(classifier.properties) == README_MAIN  # key order kept too


def test_spice_link_refused_reports_what_the_client_said() -> None:
    classifier = replay(spice_main(main_init(), result=7))  # SPICE_LINK_ERR_PERMISSION_DENIED
    assert result(classifier) == (
        True,
        "spice",
        MAIN_CLIENT_ONLY,
    )


def test_spice_server_that_is_not_spice_ends_with_the_client_side() -> None:
    classifier = replay([("c", link_mess(1)), ("s", b"HTTP/1.1 400 Bad Request\r\n")])
    assert classifier.done and classifier.protocol == "spice"
    assert classifier.properties == MAIN_CLIENT_ONLY


def test_spice_missing_uuid_is_reported_when_the_lookahead_is_full() -> None:
    steps = spice_main(main_init(), main_name(b"vm1"), *[mini(105, bytes(4))] * 400)
    classifier = replay(steps, 100)
    assert classifier.done
    assert classifier.properties == {
        "version": "2.2",
        "sessionId": "d0306d75",
        "channelType": "main",
        "serverName": "vm1",
    }


def test_spice_message_larger_than_the_lookahead_ends_the_search() -> None:
    steps = spice_main(main_init(), mini(105, bytes(10)) + struct.pack("<HI", 120, 100_000))
    classifier = replay(steps)  # the server has sent only a few hundred bytes
    assert classifier.done
    assert classifier.properties is not None
    assert classifier.properties["sessionId"] == "d0306d75"
    assert "serverName" not in classifier.properties


def test_spice_link_reply_larger_than_the_lookahead_ends_the_search() -> None:
    steps = [("c", link_mess(1)), ("s", link_header(LOOKAHEAD) + bytes(50))]
    classifier = replay(steps)
    assert classifier.done and classifier.protocol == "spice"


def test_spice_uuid_of_the_wrong_size_is_omitted() -> None:
    steps = spice_main(main_init(), main_name(b"vm"), mini(114, bytes(15)))
    classifier = replay(steps)
    assert classifier.done
    assert classifier.properties is not None
    assert "serverUUID" not in classifier.properties
    assert classifier.properties["serverName"] == "vm"


def test_spice_small_lookahead_still_reports_what_fits() -> None:
    classifier = replay(MAIN_EXCHANGE, 5, lookahead=230)
    assert classifier.done and classifier.protocol == "spice"
    assert classifier.properties == MAIN_CLIENT_ONLY


def test_not_spice_magic_denies_early() -> None:
    detector = SpiceDetector(LOOKAHEAD)
    assert detector.examine(b"RE", b"") is Verdict.MAYBE
    assert detector.examine(b"REX", b"") is Verdict.DENY


# ------------------------------------------------------------------------------ SSH

CLIENT_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"
SERVER_BANNER = b"SSH-2.0-dropbear_2022.83\r\n"
SSH_PROPS = {"clientVersion": "OpenSSH_9.6p1", "serverVersion": "dropbear_2022.83"}
KEXINIT = struct.pack(">IBB", 100, 10, 20) + bytes(98)


def test_ssh_both_banners_split_at_every_offset() -> None:
    client = CLIENT_BANNER + KEXINIT
    server = SERVER_BANNER + KEXINIT
    for cut in range(len(client)):
        steps = [("s", server[:cut]), ("c", client[:cut]), ("s", server[cut:]), ("c", client[cut:])]
        assert result(replay(steps)) == (True, "ssh", SSH_PROPS), cut


def test_ssh_one_byte_at_a_time() -> None:
    steps = [("c", CLIENT_BANNER), ("s", SERVER_BANNER)]
    assert result(replay(steps, 1)) == (True, "ssh", SSH_PROPS)


def test_ssh_is_partial_with_one_banner() -> None:
    classifier = replay([("s", SERVER_BANNER)])
    assert result(classifier) == (False, "ssh", {"serverVersion": "dropbear_2022.83"})
    classifier.feed_client(CLIENT_BANNER)
    assert result(classifier) == (True, "ssh", SSH_PROPS)


def test_ssh_server_may_send_lines_before_its_banner() -> None:
    server = b"Welcome to the bastion\r\n\r\nAuthorised use only\n" + SERVER_BANNER
    assert result(replay([("s", server), ("c", CLIENT_BANNER)], 3)) == (True, "ssh", SSH_PROPS)


def test_ssh_lf_only_and_compat_protocol_version() -> None:
    steps = [("c", b"SSH-1.99-PuTTY_Release_0.80\n"), ("s", b"SSH-2.0-srv\n")]
    props = {"clientVersion": "PuTTY_Release_0.80", "serverVersion": "srv"}
    assert result(replay(steps)) == (True, "ssh", props)


def test_ssh_one_side_not_ssh_is_final_with_the_other() -> None:
    steps = [("s", SERVER_BANNER), ("c", b"GET / HTTP/1.1\r\n")]
    assert result(replay(steps)) == (True, "ssh", {"serverVersion": "dropbear_2022.83"})
    steps = [("c", CLIENT_BANNER), ("s", b"\0\0\0\x0bbinary")]
    assert result(replay(steps)) == (True, "ssh", {"clientVersion": "OpenSSH_9.6p1"})


@pytest.mark.parametrize(
    "banner",
    [
        b"SSH-2.0-" + b"x" * 250 + b"\r\n",  # longer than 255 bytes
        b"SSH-2.0-" + b"x" * 300,  # no end of line within 255 bytes
        b"SSH-2.0- comment only\r\n",  # empty softwareversion
        b"SSH-two-OpenSSH\r\n",  # bad protoversion
        b"SSH-2.0OpenSSH\r\n",  # no second dash
        b"SSH-2.0-Open\x01SSH\r\n",  # control character
        b"ssh-2.0-OpenSSH\r\n",
    ],
)
def test_ssh_bad_client_banners_are_denied(banner: bytes) -> None:
    classifier = replay([("c", banner)])
    assert result(classifier) == (True, "", None)


def test_ssh_overlong_server_banner_is_not_ssh() -> None:
    steps = [("s", b"SSH-2.0-" + b"x" * 300), ("c", b"SSH-2.0-")]
    assert result(replay(steps, 50)) == (False, "", None)
    steps.append(("c", b"client\r\n"))
    assert result(replay(steps, 50)) == (True, "ssh", {"clientVersion": "client"})


def test_ssh_server_without_banner_waits_for_the_client() -> None:
    detector = SshDetector(LOOKAHEAD)
    assert detector.examine(b"", b"220 mail.example.org ESMTP\r\n") is Verdict.MAYBE
    assert detector.examine(b"", b"220 mail.example.org ESMTP\r\n\0") is Verdict.MAYBE
    assert detector.examine(b"EHLO", b"220 mail.example.org ESMTP\r\n\0") is Verdict.DENY


# ------------------------------------------------------------------------------ TLS


def real_client_hello(hostname: str | None = "example.org", alpn: Iterable[str] = ()) -> bytes:
    """The ClientHello that the stdlib's OpenSSL sends first."""
    context = ssl.create_default_context()
    if alpn:
        context.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def extension(kind: int, data: bytes) -> bytes:
    return struct.pack(">HH", kind, len(data)) + data


def sni(host: bytes) -> bytes:
    entry = b"\0" + struct.pack(">H", len(host)) + host
    return extension(0, struct.pack(">H", len(entry)) + entry)


def alpn(*names: bytes) -> bytes:
    body = b"".join(bytes([len(n)]) + n for n in names)
    return extension(16, struct.pack(">H", len(body)) + body)


def hello_body(
    *extensions: bytes, session_id: bytes = bytes(32), suites: bytes = b"\x13\x01"
) -> bytes:
    body = b"\x03\x03" + bytes(range(32)) + bytes([len(session_id)]) + session_id
    body += struct.pack(">H", len(suites)) + suites + b"\x01\x00"
    if extensions:
        exts = b"".join(extensions)
        body += struct.pack(">H", len(exts)) + exts
    return body


def handshake(body: bytes, kind: int = 1) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def records(message: bytes, size: int = 16384, version: bytes = b"\x03\x01") -> bytes:
    out = b""
    for i in range(0, len(message), size):
        fragment = message[i : i + size]
        out += b"\x16" + version + struct.pack(">H", len(fragment)) + fragment
    return out


HELLO = records(handshake(hello_body(alpn(b"h2", b"http/1.1"), sni(b"example.org"))))
TLS_PROPS = {"sni": "example.org", "alpn": "h2,http/1.1"}


def test_tls_real_client_hello_split_at_every_offset() -> None:
    hello = real_client_hello(alpn=["h2", "http/1.1"])
    for cut in range(len(hello) + 1):
        classifier = replay([("c", hello[:cut]), ("c", hello[cut:])])
        assert result(classifier) == (True, "tls", TLS_PROPS), cut


def test_tls_real_client_hello_one_byte_at_a_time_without_alpn_or_sni() -> None:
    assert result(replay([("c", real_client_hello())], 1)) == (True, "tls", {"sni": "example.org"})
    assert result(replay([("c", real_client_hello(None))], 1)) == (True, "tls", {})


@pytest.mark.parametrize("size", [1, 5, 50, 100])
def test_tls_client_hello_fragmented_over_records(size: int) -> None:
    message = handshake(hello_body(sni(b"example.org"), alpn(b"h2", b"http/1.1")))
    stream = records(message, size, b"\x03\x03")
    for chunk in (1, 3, None):
        assert result(replay([("c", stream)], chunk)) == (True, "tls", TLS_PROPS)


def test_tls_hello_without_extensions_and_first_sni_host_wins() -> None:
    assert result(replay([("c", records(handshake(hello_body())))])) == (True, "tls", {})
    entries = b"\x05\x00\x01x" + b"\x00\x00\x01a" + b"\x00\x00\x01b"
    two = extension(0, struct.pack(">H", len(entries)) + entries)
    assert replay([("c", records(handshake(hello_body(two))))]).properties == {"sni": "a"}


def corrupt(message: bytes, offset: int, value: bytes) -> bytes:
    return message[:offset] + value + message[offset + len(value) :]


BODY = hello_body(sni(b"example.org"))
SUITES_AT = 2 + 32 + 1 + 32  # offset of the cipher suites length in BODY
EXTS_AT = SUITES_AT + 2 + 2 + 2  # offset of the extensions length in BODY


@pytest.mark.parametrize(
    "stream",
    [
        b"\x17\x03\x03\x00\x05hello",  # application data record
        b"\x16\x02\x00\x00\x05hello",  # record version 2.0
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x40\x01" + bytes(100),  # record over 2^14
        records(handshake(BODY, kind=2)),  # ServerHello
        records(handshake(BODY[:40])),  # hello shorter than the minimum
        records(handshake(corrupt(BODY, 0, b"\x02"))),  # legacy_version 2.x
        records(handshake(hello_body(session_id=bytes(33)))),
        records(handshake(hello_body(suites=b"\x13"))),  # odd cipher suites length
        records(handshake(hello_body(suites=b""))),
        records(handshake(corrupt(BODY, SUITES_AT + 4, b"\x00"))),  # no compression methods
        records(handshake(corrupt(BODY, SUITES_AT, b"\x01\x00"))),  # runs past the hello
        records(handshake(corrupt(BODY, EXTS_AT, b"\x00\x01"))),  # extensions block too short
        records(handshake(corrupt(BODY, EXTS_AT, b"\x00\xff"))),  # extensions block too long
        records(handshake(BODY + b"\0")),  # trailing byte after the extensions
        records(handshake(hello_body(extension(0, b"\x00\x09\x00\x00\x01x")))),  # SNI list > data
        records(handshake(hello_body(extension(0, b"")))),  # empty SNI extension
        records(handshake(hello_body(extension(0, b"\x00\x04\x00\x00\x01xy")))),  # SNI trailer
        records(handshake(hello_body(b"\x00\x00\x00\x10abc"))),  # extension past the hello
        records(handshake(hello_body(extension(16, b"\x00\x00")))),  # empty ALPN list
        records(handshake(hello_body(extension(16, b"\x00\x01\x00")))),  # empty ALPN name
        records(handshake(hello_body(extension(0, b"\x00\x04\x00\x00\x05x")))),  # name overflows
    ],
)
def test_tls_malformed_lengths_are_denied(stream: bytes) -> None:
    for chunk in (1, None):
        assert result(replay([("c", stream)], chunk)) == (True, "", None)


def test_tls_hello_larger_than_the_lookahead_reports_the_visible_part() -> None:
    padding = extension(21, bytes(300))
    stream = records(handshake(hello_body(sni(b"example.org"), padding, alpn(b"h2"))))
    classifier = replay([("c", stream)], 10, lookahead=200)
    assert result(classifier) == (True, "tls", {"sni": "example.org"})


def test_tls_hello_larger_than_the_lookahead_with_a_bad_extension_is_denied() -> None:
    body = hello_body(sni(b"example.org"), extension(21, bytes(300)))
    body = corrupt(body, EXTS_AT + 2 + len(sni(b"example.org")) + 2, b"\x01\x30")  # past the end
    classifier = replay([("c", records(handshake(body)))], 10, lookahead=200)
    assert result(classifier) == (True, "", None)


def test_tls_needs_the_whole_hello() -> None:
    detector = TlsDetector(LOOKAHEAD)
    assert detector.examine(b"", b"") is Verdict.MAYBE
    assert detector.examine(HELLO[:-1], b"") is Verdict.MAYBE
    assert detector.examine(HELLO, b"") is Verdict.AFFIRM
    assert detector.properties == TLS_PROPS


def test_tls_handshake_header_cut_by_the_lookahead_is_denied() -> None:
    stream = records(b"\x01\x00", 1) + b"\x16\x03\x01\x00"
    assert result(replay([("c", stream)], lookahead=len(stream))) == (True, "", None)


# ------------------------------------------------------------------------------ other traffic


def test_http_is_nothing_and_final_at_once() -> None:
    classifier = Classifier()
    classifier.feed_client(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
    assert result(classifier) == (True, "", None)


def test_random_bytes_are_nothing() -> None:
    rng = random.Random(4253)
    for _ in range(200):
        classifier = Classifier()
        for _ in range(3):
            classifier.feed_client(rng.randbytes(rng.randrange(1, 2000)))
            classifier.feed_server(rng.randbytes(rng.randrange(1, 2000)))
        classifier.feed_client(bytes(LOOKAHEAD))
        classifier.feed_server(bytes(LOOKAHEAD))
        assert classifier.done
        assert classifier.protocol in ("", "tls", "spice", "ssh")


def test_undecided_traffic_is_final_when_both_lookaheads_are_full() -> None:
    classifier = Classifier()
    classifier.feed_server(b"220 mail.example.org ESMTP ready\r\n")  # SSH still possible
    assert not classifier.done
    classifier.feed_server(b"x" * LOOKAHEAD)
    assert not classifier.done  # the client has not spoken
    classifier.feed_client(b"S")
    classifier.feed_client(b"S" * LOOKAHEAD)
    assert result(classifier) == (True, "", None)


def test_finish_makes_what_is_known_final() -> None:
    classifier = Classifier()
    classifier.feed_client(link_mess(1, SESSION))
    assert not classifier.done
    classifier.finish()
    assert classifier.done and classifier.protocol == "spice"
    classifier.feed_server(MAIN_EXCHANGE[1][1])  # ignored once done
    assert classifier.properties == {**MAIN_CLIENT_ONLY, "sessionId": "d0306d75"}
    silent = Classifier()
    silent.finish()
    assert result(silent) == (True, "", None)


def test_properties_are_a_copy() -> None:
    classifier = replay([("c", link_mess(2, SESSION))])
    assert classifier.properties is not None
    classifier.properties["channelType"] = "evil"
    assert classifier.properties["channelType"] == "display"


def test_feed_accepts_bytearray_and_memoryview() -> None:
    classifier = Classifier()
    classifier.feed_client(bytearray(CLIENT_BANNER))
    classifier.feed_server(memoryview(SERVER_BANNER))
    assert result(classifier) == (True, "ssh", SSH_PROPS)


# ------------------------------------------------------------------------------ extending


class HttpHostDetector(Detector):
    """The example of a new protocol in one small class: HTTP/1.x request's Host header."""

    name = "http"

    def examine(self, client: bytes, server: bytes) -> Verdict:
        methods = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ")
        if not any(m.startswith(client[: len(m)]) or client.startswith(m) for m in methods):
            return Verdict.DENY
        head, sep, _ = client.partition(b"\r\n\r\n")
        if not sep:
            return Verdict.DENY if len(client) >= self.lookahead else Verdict.MAYBE
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"host":
                self.properties = {"host": value.strip().decode("latin-1")}
                return Verdict.AFFIRM
        self.properties = {}
        return Verdict.AFFIRM


class FickleDetector(Detector):
    """Claims the tunnel, then changes its mind."""

    name = "fickle"

    def examine(self, client: bytes, server: bytes) -> Verdict:
        self.properties = {"bytes": str(len(client))}
        return Verdict.PARTIAL if len(client) < 3 else Verdict.DENY


class ExplodingDetector(Detector):
    name = "boom"

    def examine(self, client: bytes, server: bytes) -> Verdict:
        raise RuntimeError("bug")


def test_a_new_protocol_is_one_small_class() -> None:
    classifier = Classifier([*DEFAULT_DETECTORS, HttpHostDetector])
    request = b"GET / HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n"
    for byte in request:
        classifier.feed_client(bytes([byte]))
    assert result(classifier) == (True, "http", {"host": "example.org"})


def test_a_failing_detector_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    classifier = Classifier([ExplodingDetector, SshDetector])
    classifier.feed_client(CLIENT_BANNER)
    classifier.feed_server(SERVER_BANNER)
    assert result(classifier) == (True, "ssh", SSH_PROPS)
    assert "classifier 'boom' failed" in caplog.text


def test_a_claimed_tunnel_never_goes_back_to_unknown() -> None:
    classifier = Classifier([FickleDetector, SshDetector])
    classifier.feed_client(b"S")
    assert result(classifier) == (False, "fickle", {"bytes": "1"})
    classifier.feed_client(b"SH-2.0-x\r\n")  # SSH is no longer asked
    assert result(classifier) == (True, "fickle", {"bytes": "11"})


def test_no_detectors_is_done_at_once() -> None:
    assert result(Classifier([])) == (True, "", None)


def test_lookahead_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lookahead"):
        Classifier(lookahead=0)


def test_detectors_by_name() -> None:
    assert detectors_named(["tls", "spice"]) == (TlsDetector, SpiceDetector)
    with pytest.raises(ConfigError, match="unknown protocol classifier 'http'; known: spice"):
        detectors_named(["http"])


# ------------------------------------------------------------------------------ fuzzing


class Recorder(Detector):
    """Never decides; remembers the largest buffers it was shown."""

    name = "recorder"
    largest = [0, 0]

    def examine(self, client: bytes, server: bytes) -> Verdict:
        Recorder.largest = [
            max(Recorder.largest[0], len(client)),
            max(Recorder.largest[1], len(server)),
        ]
        return Verdict.MAYBE


SAMPLES = [
    b"".join(d for s, d in MAIN_EXCHANGE if s == "c"),
    b"".join(d for s, d in MAIN_EXCHANGE if s == "s"),
    link_mess(2, SESSION),
    CLIENT_BANNER + KEXINIT,
    SERVER_BANNER,
    HELLO,
    records(handshake(hello_body(sni(b"a.example"), alpn(b"h2"))), 20),
]


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Random bytes, or a real message truncated, mutated and followed by random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    del data[draw(st.integers(0, len(data))) :]
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data) + draw(st.binary(max_size=64))


chunkings = st.lists(st.integers(1, 300), min_size=1, max_size=20)


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i, n = [], 0, 0
    while i < len(data):
        out.append(data[i : i + sizes[n % len(sizes)]])
        i += sizes[n % len(sizes)]
        n += 1
    return out


@settings(max_examples=300, deadline=None)
@given(
    client=streams(),
    server=streams(),
    client_sizes=chunkings,
    server_sizes=chunkings,
    lookahead=st.sampled_from([LOOKAHEAD, 64, 300]),
)
def test_fuzz_never_raises_stays_bounded_and_finishes(
    client: bytes, server: bytes, client_sizes: list[int], server_sizes: list[int], lookahead: int
) -> None:
    Recorder.largest = [0, 0]
    plain = Classifier(lookahead=lookahead)
    recorded = Classifier([*DEFAULT_DETECTORS, Recorder], lookahead=lookahead)
    client_chunks = chunked(client + bytes(lookahead), client_sizes)
    server_chunks = chunked(server + b"\n" * lookahead, server_sizes)
    seen = ""
    for i in range(max(len(client_chunks), len(server_chunks))):
        for classifier in (plain, recorded):
            classifier.feed_client(client_chunks[i] if i < len(client_chunks) else b"")
            classifier.feed_server(server_chunks[i] if i < len(server_chunks) else b"")
        assert seen in ("", plain.protocol)  # never changes once known
        seen = plain.protocol
        assert (plain.properties is None) == (plain.protocol == "")
    assert plain.done and recorded.done
    assert plain.protocol in ("", "spice", "ssh", "tls")
    assert max(Recorder.largest) <= lookahead


@settings(max_examples=200, deadline=None)
@given(sample=st.sampled_from(SAMPLES[2:]), sizes=chunkings)
def test_fuzz_chunking_does_not_change_the_result(sample: bytes, sizes: list[int]) -> None:
    whole = Classifier()
    whole.feed_client(sample)
    pieces = Classifier()
    for chunk in chunked(sample, sizes):
        pieces.feed_client(chunk)
    assert result(whole) == result(pieces)


@settings(max_examples=300, deadline=None)
@given(client=st.binary(max_size=300), server=st.binary(max_size=300))
def test_fuzz_detectors_directly(client: bytes, server: bytes) -> None:
    for cls in DEFAULT_DETECTORS:
        detector = cls(128)
        for end in range(0, 301, 37):
            verdict = detector.examine(client[:end][:128], server[:end][:128])
            assert isinstance(verdict, Verdict)
            if verdict is Verdict.DENY:
                break
