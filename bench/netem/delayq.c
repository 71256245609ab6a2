/* delayq: hold every packet of an NFQUEUE for a fixed delay, then accept it.
 *
 * The kernel on these machines has no netem, so the emulated link's propagation delay comes
 * from here: iptables sends forwarded packets to NFQUEUE <queue>; this program records each
 * packet's id and arrival time in a FIFO (a constant delay keeps release order = arrival order,
 * so a ring buffer is the whole timer wheel) and issues NF_ACCEPT once the delay has passed.
 *
 *   delayq --queue 0 --delay-ms 25 [--maxlen 100000]
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

static struct held *ring;
static size_t ring_cap, ring_head, ring_len;
static uint64_t delay_ns;
static uint64_t overflow, accepted;
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
    if (ring_len == ring_cap) {
        /* more held than we can track: drop it, like a full router buffer */
        overflow++;
        return nfq_set_verdict(qh, id, NF_DROP, 0, NULL);
    }
    struct held *h = &ring[(ring_head + ring_len) % ring_cap];
    h->id = id;
    h->due_ns = now_ns() + delay_ns;
    ring_len++;
    return 0;
}

/* Accept every held packet that is due (all of them when `all`); batch verdicts by id. */
static void release(struct nfq_q_handle *qh, uint64_t now, int all)
{
    uint32_t last = 0;
    int have = 0;
    while (ring_len > 0 && (all || ring[ring_head].due_ns <= now)) {
        uint32_t id = ring[ring_head].id;
        if (have && id < last) {
            /* ids wrapped around: flush what we have before continuing */
            nfq_set_verdict_batch(qh, last, NF_ACCEPT);
            have = 0;
        }
        last = id;
        have = 1;
        ring_head = (ring_head + 1) % ring_cap;
        ring_len--;
        accepted++;
    }
    if (have)
        nfq_set_verdict_batch(qh, last, NF_ACCEPT);
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
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--queue") && i + 1 < argc)
            queue = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--delay-ms") && i + 1 < argc)
            delay_ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--maxlen") && i + 1 < argc)
            maxlen = (size_t)atol(argv[++i]);
        else {
            fprintf(stderr, "usage: %s --queue N --delay-ms D [--maxlen N]\n", argv[0]);
            return 2;
        }
    }
    delay_ns = (uint64_t)(delay_ms * 1e6);
    ring_cap = maxlen;
    ring = calloc(ring_cap, sizeof *ring);
    if (ring == NULL) {
        perror("calloc");
        return 1;
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

    fprintf(stderr, "delayq: queue %d, delay %.3f ms, maxlen %zu\n", queue, delay_ms, maxlen);
    fflush(stderr);
    char buf[65536] __attribute__((aligned));
    while (!stop) {
        uint64_t now = now_ns();
        release(qh, now, 0);
        struct timespec ts, *tsp = NULL;
        if (ring_len > 0) {
            uint64_t wait = ring[ring_head].due_ns - now;
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
    fprintf(stderr, "delayq: exit, %llu accepted, %llu dropped on overflow\n",
            (unsigned long long)accepted, (unsigned long long)overflow);
    nfq_destroy_queue(qh);
    nfq_close(h);
    free(ring);
    return 0;
}
