"""A discrete-event bottleneck for testing congestion controllers without a network.

One FIFO bottleneck (rate, tail-drop byte limit, random loss on arrival as on the emulated link
of bench/netem), a fixed base RTT, and bulk senders driven exactly as the QUIC engine drives
them: packets leave while in-flight < cwnd and the pacer allows, the sender wakes on a 1 ms
timer grid (uvloop's clock), every packet is acknowledged, and a packet is declared lost once
three later ones are acknowledged.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field

from quictund.quic.bbr import Bbr, SentState
from quictund.quic.pacing import Pacer

MDS = 1250
TICK = 0.001


@dataclass
class Flow:
    cc: Bbr
    start: float = 0.0
    pacer: Pacer = field(default_factory=lambda: Pacer(max_datagram_size=MDS))
    inflight: int = 0
    next_pn: int = 0
    outstanding: dict[int, tuple[int, SentState]] = field(default_factory=dict)
    wake_at: float | None = None
    acked_log: list[tuple[float, int]] = field(default_factory=list)
    lost: int = 0
    sent: int = 0

    def goodput(self, t0: float, t1: float) -> float:
        """Bytes/s acknowledged between t0 and t1."""
        return sum(n for t, n in self.acked_log if t0 <= t < t1) / (t1 - t0)


@dataclass
class Link:
    rate: float  # bytes/s
    rtt: float
    limit: int  # bytes queued at most
    loss: float = 0.0
    seed: int = 1
    flows: list[Flow] = field(default_factory=list)
    rate_changes: list[tuple[float, float]] = field(default_factory=list)  # (at, new rate)
    overflow_drops: int = 0
    random_drops: int = 0

    def run(self, until: float) -> None:
        rng = random.Random(self.seed)
        seq = itertools.count()
        events: list[tuple[float, int, str, object]] = []
        queue: deque[tuple[Flow, int, int]] = deque()
        queued = 0
        busy = False

        def push(at: float, kind: str, data: object) -> None:
            heapq.heappush(events, (at, next(seq), kind, data))

        def try_send(flow: Flow, now: float) -> None:
            nonlocal queued, busy
            while flow.inflight + MDS <= flow.cc.cwnd:
                flow.pacer.rate = flow.cc.pacing_rate
                at = flow.pacer.next_send_time(now)
                if at is not None:
                    wake = math.ceil(at / TICK - 1e-9) * TICK  # the 1 ms timer grid
                    if flow.wake_at is None or wake < flow.wake_at:
                        flow.wake_at = wake
                        push(wake, "wake", flow)
                    return
                pn = flow.next_pn
                flow.next_pn += 1
                flow.outstanding[pn] = (MDS, flow.cc.on_sent(now, flow.inflight, MDS))
                flow.inflight += MDS
                flow.sent += 1
                flow.pacer.on_sent(MDS)
                if rng.random() < self.loss:
                    self.random_drops += 1
                elif queued + MDS > self.limit:
                    self.overflow_drops += 1
                else:
                    queue.append((flow, pn, MDS))
                    queued += MDS
                    if not busy:
                        busy = True
                        push(now + MDS / self.rate, "depart", None)

        for flow in self.flows:
            push(flow.start, "wake", flow)
        for at, rate in self.rate_changes:
            push(at, "rate", rate)
        while events:
            now, _, kind, data = heapq.heappop(events)
            if now > until:
                break
            if kind == "wake":
                assert isinstance(data, Flow)
                if data.wake_at is not None and now < data.wake_at:
                    continue  # superseded by an earlier wake
                data.wake_at = None
                try_send(data, now)
            elif kind == "rate":
                assert isinstance(data, float)
                self.rate = data
            elif kind == "depart":
                flow, pn, size = queue.popleft()
                queued -= size
                push(now + self.rtt, "ack", (flow, pn))
                if queue:
                    push(now + queue[0][2] / self.rate, "depart", None)
                else:
                    busy = False
            else:
                flow, pn = data  # type: ignore[misc]
                pn = int(pn)
                entry = flow.outstanding.pop(pn, None)
                if entry is None:
                    continue
                size, state = entry
                flow.inflight -= size
                flow.cc.on_acked(now, size, state)
                flow.acked_log.append((now, size))
                flow.cc.on_rtt(now, now - state.sent_time)
                threshold = pn - 3
                lost_pns = list(itertools.takewhile(threshold.__gt__, flow.outstanding))
                for lost_pn in lost_pns:
                    lost_size, _ = flow.outstanding.pop(lost_pn)
                    flow.inflight -= lost_size
                    flow.lost += 1
                    flow.cc.on_lost(lost_size)
                flow.cc.on_ack_done(now, flow.inflight)
                try_send(flow, now)
