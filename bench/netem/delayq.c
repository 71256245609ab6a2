/* delayq: hold every packet of an NFQUEUE for a fixed delay, then accept it.
 *
 * The kernel on these machines has no netem, so the emulated link's propagation delay comes
 * from here: iptables sends forwarded packets to NFQUEUE <queue>; this program records each
 * packet's id and arrival time in a FIFO (a constant delay keeps release order = arrival order,
 * so a ring buffer is the whole timer wheel) and issues NF_ACCEPT once the delay has passed.
 *
 *   delayq --queue 0 --delay-ms 25 [--maxlen 100000] [--reorder-pct 1 --reorder-ms -25]
 *
 * Reordering: with --reorder-pct P a random P % of packets get --delay-ms + --reorder-ms
 * instead (a negative value makes them jump ahead of the packets queued before them, a
 * positive one holds them back behind later ones; the sum is clamped at 0).  Each class keeps
 * its own FIFO (constant delay per class), and release takes whichever head is due first.
 * Verdicts then go out one by one: a batch verdict accepts every id up to the given one, which
 * would release the other class's held packets early.
 *
 * Only packet metadata is copied to user space (NFQNL_COPY_META), and verdicts go out in
 * batches (nfq_set_verdict_batch accepts every id up to the given one), so ~10k packets/s cost
 * little CPU.  Timing uses CLOCK_MONOTONIC and ppoll with nanosecond timeouts, not 1 ms poll.
 *
 * Queue flags, chosen so a broken link is visible rather than silently wrong:
 *  - no NFQA_CFG_F_FAIL_OPEN: when the kernel queue is full the packet is dropped, as a
 *    router with a full buffer would, instead of passing undelayed;
 *  - the iptables rule uses no --queue-bypass: if this process dies, packets are dropped and
 *    the benchmark fails loudly instead of measuring a zero-delay link.
 * SIGTERM/SIGINT: accept everything still held, unbind, exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct held {
    uint32_t id;
    uint64_t due_ns;
};

struct fifo {
    struct held *ring;
    size_t cap, head, len;
    uint64_t delay_ns;
};

static struct fifo q[2]; /* 0: every packet; 1: the reordered fraction */
static uint32_t reorder_ppm; /* packets per million that go to q[1] */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t overflow, accepted, reordered;
static volatile sig_atomic_t stop;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data)
{
    (void)msg;
    (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (ph == NULL)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    struct fifo *f = &q[0];
    if (reorder_ppm) {
        rng ^= rng << 13; /* xorshift64: fast, and deterministic run to run */
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if (rng % 1000000u < reorder_ppm) {
            f = &q[1];
            reordered++;
        }
    }
    if (f->len == f->cap) {
        /* more held than we can track: drop it, like a full router buffer */
        overflow++;
        return nfq_set_verdict(qh, id, NF_DROP, 0, NULL);
    }
    struct held *h = &f->ring[(f->head + f->len) % f->cap];
    h->id = id;
    h->due_ns = now_ns() + f->delay_ns;
    f->len++;
    return 0;
}

/* Accept every held packet that is due (all of them when `all`).  Without reordering, batch
 * verdicts by id; with it, one verdict per packet, earliest due first. */
static void release(struct nfq_q_handle *qh, uint64_t now, int all)
{
    uint32_t last = 0;
    int have = 0;
    for (;;) {
        struct fifo *f = NULL;
        for (int i = 0; i < 2; i++)
            if (q[i].len > 0 && (all || q[i].ring[q[i].head].due_ns <= now) &&
                (f == NULL || q[i].ring[q[i].head].due_ns < f->ring[f->head].due_ns))
                f = &q[i];
        if (f == NULL)
            break;
        uint32_t id = f->ring[f->head].id;
        f->head = (f->head + 1) % f->cap;
        f->len--;
        accepted++;
        if (reorder_ppm) {
            nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
            continue;
        }
        if (have && id < last) {
            /* ids wrapped around: flush what we have before continuing */
            nfq_set_verdict_batch(qh, last, NF_ACCEPT);
            have = 0;
        }
        last = id;
        have = 1;
    }
    if (have)
        nfq_set_verdict_batch(qh, last, NF_ACCEPT);
}

/* The earliest due time held, or 0 when nothing is. */
static uint64_t next_due(void)
{
    uint64_t due = 0;
    for (int i = 0; i < 2; i++)
        if (q[i].len > 0 && (due == 0 || q[i].ring[q[i].head].due_ns < due))
            due = q[i].ring[q[i].head].due_ns;
    return due;
}

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    int queue = 0;
    double delay_ms = 25.0;
    size_t maxlen = 100000;
    double reorder_pct = 0.0, reorder_ms = 0.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--queue") && i + 1 < argc)
            queue = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--delay-ms") && i + 1 < argc)
            delay_ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--maxlen") && i + 1 < argc)
            maxlen = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--reorder-pct") && i + 1 < argc)
            reorder_pct = atof(argv[++i]);
        else if (!strcmp(argv[i], "--reorder-ms") && i + 1 < argc)
            reorder_ms = atof(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: %s --queue N --delay-ms D [--maxlen N] [--reorder-pct P "
                    "--reorder-ms D]\n",
                    argv[0]);
            return 2;
        }
    }
    double other_ms = delay_ms + reorder_ms;
    q[0].delay_ns = (uint64_t)(delay_ms * 1e6);
    q[1].delay_ns = (uint64_t)((other_ms > 0 ? other_ms : 0) * 1e6);
    reorder_ppm = (uint32_t)(reorder_pct * 10000.0 + 0.5);
    for (int i = 0; i < 2; i++) {
        q[i].cap = maxlen;
        q[i].ring = calloc(q[i].cap, sizeof *q[i].ring);
        if (q[i].ring == NULL) {
            perror("calloc");
            return 1;
        }
    }

    struct nfq_handle *h = nfq_open();
    if (h == NULL) {
        perror("nfq_open");
        return 1;
    }
    nfq_unbind_pf(h, AF_INET);
    if (nfq_bind_pf(h, AF_INET) < 0) {
        perror("nfq_bind_pf");
        return 1;
    }
    struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)queue, &on_packet, NULL);
    if (qh == NULL) {
        perror("nfq_create_queue");
        return 1;
    }
    if (nfq_set_mode(qh, NFQNL_COPY_META, 0) < 0) {
        perror("nfq_set_mode");
        return 1;
    }
    nfq_set_queue_maxlen(qh, (uint32_t)maxlen);
    int fd = nfq_fd(h);
    /* a burst of arrivals must not overflow the netlink socket (ENOBUFS = lost packets) */
    nfnl_rcvbufsiz(nfq_nfnlh(h), 64u * 1024 * 1024);
    int one = 1;
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    fprintf(stderr, "delayq: queue %d, delay %.3f ms, maxlen %zu, %.3f %% at %.3f ms\n", queue,
            delay_ms, maxlen, reorder_pct, other_ms > 0 ? other_ms : 0);
    fflush(stderr);
    char buf[65536] __attribute__((aligned));
    while (!stop) {
        uint64_t now = now_ns();
        release(qh, now, 0);
        struct timespec ts, *tsp = NULL;
        uint64_t due = next_due();
        if (due != 0) {
            uint64_t wait = due > now ? due - now : 0;
            ts.tv_sec = (time_t)(wait / 1000000000ull);
            ts.tv_nsec = (long)(wait % 1000000000ull);
            tsp = &ts;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = ppoll(&pfd, 1, tsp, NULL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            perror("ppoll");
            break;
        }
        if (r > 0) {
            /* drain everything queued without blocking */
            for (;;) {
                ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
                if (n < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                        errno != ENOBUFS)
                        perror("recv");
                    break;
                }
                nfq_handle_packet(h, buf, (int)n);
            }
        }
    }
    release(qh, now_ns(), 1);
    fprintf(stderr, "delayq: exit, %llu accepted (%llu reordered), %llu dropped on overflow\n",
            (unsigned long long)accepted, (unsigned long long)reordered,
            (unsigned long long)overflow);
    nfq_destroy_queue(qh);
    nfq_close(h);
    free(q[0].ring);
    free(q[1].ring);
    return 0;
}
