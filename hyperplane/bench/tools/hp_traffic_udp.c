/* hp-traffic udp-sink and udp-send: datagrams counted a batch at a time (recvmmsg) and sent at
 * a paced rate (sendmmsg) from one UDP socket per flow, or as prebuilt frames with --link. */
#include "hp_traffic.h"

#include <poll.h>
#include <sys/prctl.h>

/* ---- udp-sink ---------------------------------------------------------------------------------- */
#define RX_BATCH 64
#define RX_BUF 2048
#define BUSY_S 0.002 /* a datagram within the last 2 ms: traffic is flowing */
#define NAP_S 0.0001 /* then look again every 100 us (16 MiB of buffer holds ~20,000 datagrams) */

int cmd_udp_sink(int argc, char **argv)
{
    static const char *const allowed[] = {"bind", "port", "seconds", "idle-ms", "cpu", NULL};
    struct opts o = {allowed, {0}};
    parse_opts(&o, argc, argv);
    int port = (int)opt_int(&o, "port", 1, 65535, NULL);
    struct addr a = opt_addr(&o, "bind", port, SOCK_DGRAM);
    double max_s = opt_num(&o, "seconds", 0.001, 86400, "30");
    long long idle_ms = opt_int(&o, "idle-ms", 1, 3600000, "500");
    apply_cpu(&o);
    install_signals(1);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

    int fd = socket(a.family, SOCK_DGRAM, 0);
    if (fd < 0)
        sys_error("socket");
    int rcvbuf = 16 << 20, one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf); /* not root: best effort */
    /* the kernel's count of datagrams dropped because the receive buffer was full */
    setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a.ss, a.len) < 0)
        sys_error("bind --bind %s --port %d", opt_str(&o, "bind", NULL), port);
    set_nonblock(fd);

    static char bufs[RX_BATCH][RX_BUF];
    static char ctrl[RX_BATCH][CMSG_SPACE(sizeof(uint32_t))];
    struct iovec iov[RX_BATCH];
    struct mmsghdr msgs[RX_BATCH];
    for (int i = 0; i < RX_BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = RX_BUF;
    }
    unsigned long long packets = 0, bytes = 0;
    uint32_t drops = 0;
    double t_start = now_s(), t_first = 0, t_last = 0;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    ready();

    while (!stop_requested) {
        double now = now_s(), until = t_start + max_s;
        if (packets && t_last + (double)idle_ms / 1000.0 < until)
            until = t_last + (double)idle_ms / 1000.0;
        if (now >= until)
            break;
        double wait = until - now;
        struct pollfd *pp = &pfd;
        if (packets && now - t_last < BUSY_S && wait > NAP_S) {
            /* Traffic is flowing: nap instead of waiting on the socket. A sleeping receiver
             * makes the sender's CPU pay a wake-up (an IPI) for nearly every datagram, which
             * halved the send rate; a napping one is never on the socket's wait queue. */
            pp = NULL;
            wait = NAP_S;
        }
        struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        int pr = ppoll(pp, pp ? 1 : 0, &ts, &wait_mask);
        if (pr < 0 && errno != EINTR)
            sys_error("ppoll");
        if (pr < 0 || (pp && pr == 0))
            continue;
        for (;;) { /* drain what is queued, a batch at a time */
            for (int i = 0; i < RX_BATCH; i++) {
                memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
                msgs[i].msg_hdr.msg_control = ctrl[i];
                msgs[i].msg_hdr.msg_controllen = sizeof ctrl[i];
            }
            int n = recvmmsg(fd, msgs, RX_BATCH, MSG_DONTWAIT | MSG_TRUNC, NULL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                sys_error("recvmmsg");
            }
            if (n == 0)
                break;
            double t = now_s();
            if (!packets)
                t_first = t;
            t_last = t;
            packets += (unsigned)n;
            for (int i = 0; i < n; i++)
                bytes += msgs[i].msg_len; /* MSG_TRUNC: the datagram's real length */
            struct msghdr *h = &msgs[n - 1].msg_hdr;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL)
                    memcpy(&drops, CMSG_DATA(c), sizeof drops);
            if (n < RX_BATCH)
                break;
        }
    }
    /* Packets per second between the first and the last arrival: intervals / time. */
    double secs = packets > 1 ? t_last - t_first : 0.0;
    double rate = secs > 0 ? (double)(packets - 1) / secs : 0.0;
    printf("{\"packets\":%llu,\"bytes\":%llu,\"seconds\":%.6f,\"rate\":%.1f,"
           "\"rcvbuf_drops\":%u}\n", packets, bytes, secs, rate, drops);
    fflush(stdout);
    close(fd);
    return 0;
}

/* ---- udp-send ---------------------------------------------------------------------------------- */
#define TX_BATCH 32
#define BATCH_NS 50000.0 /* a paced batch spans at most ~50 us of the schedule */
#define SPIN_NS 10000LL /* closer than this to the next due batch: spin rather than sleep */

int cmd_udp_send(int argc, char **argv)
{
    static const char *const allowed[] = {"dst", "port", "rate", "seconds", "size", "flows",
                                          "dst-ports", "src-port", "link", "next-hop-mac",
                                          "cpu", NULL};
    struct opts o = {allowed, {0}};
    parse_opts(&o, argc, argv);
    int port = (int)opt_int(&o, "port", 1, 65535, NULL);
    struct addr a = opt_addr(&o, "dst", port, SOCK_DGRAM);
    double rate = opt_num(&o, "rate", 0, 1e9, NULL);
    double seconds = opt_num(&o, "seconds", 0.001, 86400, NULL);
    /* one Ethernet frame of 1500 bytes: IPv4 + UDP headers 28 bytes, IPv6 + UDP 48 */
    int max_size = a.family == AF_INET6 ? 1452 : 1472;
    int size = (int)opt_int(&o, "size", 1, max_size, "64");
    int nflows = (int)opt_int(&o, "flows", 1, 4096, "1");
    /* --dst-ports N: packet i goes to port + i % N, so one run creates N distinct flows per
     * source socket (how `benchmarks/e2e_scaling.py` fills a NAT's table) */
    int ndports = (int)opt_int(&o, "dst-ports", 1, 65535, "1");
    if (port + ndports - 1 > 65535)
        usage_error("option --dst-ports: %d ports from --port %d end past 65535; use at most %d",
                    ndports, port, 65536 - port);
    /* --src-port P: flow f sends from port P + f (0: the kernel picks), so a second run with
     * the same options refreshes the same flows instead of creating new ones */
    int src_port = (int)opt_int(&o, "src-port", 0, 65535, "0");
    if (src_port && src_port + nflows - 1 > 65535)
        usage_error("option --src-port: %d flows from port %d end past 65535; use at most %d",
                    nflows, src_port, 65536 - nflows);
    /* --link IF --next-hop-mac MAC: whole frames on IF's packet socket (hp_traffic_frames.c) */
    const char *link = opt_str(&o, "link", "");
    const char *nh_mac = opt_str(&o, "next-hop-mac", "");
    if (!*link != !*nh_mac)
        usage_error("options --link and --next-hop-mac go together (the frames' interface and "
                    "the MAC of the next hop on it)");
    if (*link && ndports > 1)
        usage_error("option --link sends prebuilt frames, one per flow: use --dst-ports 1");
    apply_cpu(&o);
    install_signals(0);
    raise_nofile();
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* wake from clock_nanosleep on time */

    int *fds = calloc((size_t)nflows, sizeof *fds);
    if (!fds)
        sys_error("calloc");
    for (int f = 0; f < nflows; f++) { /* each has its own source port */
        fds[f] = socket(a.family, SOCK_DGRAM, 0);
        if (fds[f] < 0)
            sys_error("socket (flow %d)", f);
        int sndbuf = 4 << 20;
        if (setsockopt(fds[f], SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0)
            setsockopt(fds[f], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        if (src_port) {
            struct sockaddr_storage la;
            memset(&la, 0, sizeof la);
            la.ss_family = (sa_family_t)a.family;
            if (a.family == AF_INET6)
                ((struct sockaddr_in6 *)&la)->sin6_port = htons((uint16_t)(src_port + f));
            else
                ((struct sockaddr_in *)&la)->sin_port = htons((uint16_t)(src_port + f));
            if (bind(fds[f], (struct sockaddr *)&la, a.len) < 0)
                sys_error("bind --src-port %d (flow %d)", src_port + f, f);
        }
        /* one destination port: connected (an ICMP error fails the next send, counted);
         * several: unconnected, each message names its destination (msg_name) */
        if (ndports == 1 && connect(fds[f], (struct sockaddr *)&a.ss, a.len) < 0)
            sys_error("connect --dst %s --port %d", opt_str(&o, "dst", NULL), port);
    }
    char *payload = malloc((size_t)size);
    if (!payload)
        sys_error("malloc");
    for (int i = 0; i < size; i++)
        payload[i] = (char)('a' + i % 26);
    struct iovec iov = {payload, (size_t)size};
    struct mmsghdr msgs[TX_BATCH];
    struct sockaddr_storage names[TX_BATCH]; /* --dst-ports > 1: each message's destination */
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < TX_BATCH; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
        if (ndports > 1) {
            names[i] = a.ss;
            msgs[i].msg_hdr.msg_name = &names[i];
            msgs[i].msg_hdr.msg_namelen = a.len;
        }
    }
    /* --link: the UDP sockets above only hold each flow's source port (and learn the source
     * address); one packet socket sends flow f's prebuilt frame (hp_traffic_frames.c) */
    struct link_sender ls = {.fd = -1};
    if (*link) {
        link_sender_open(&ls, link, nh_mac, &a, fds, nflows, payload, size);
        for (int i = 0; i < TX_BATCH; i++) {
            msgs[i].msg_hdr.msg_name = &ls.sll;
            msgs[i].msg_hdr.msg_namelen = sizeof ls.sll;
        }
    }

    /* Paced: packet i is due at start + i/rate (an absolute schedule, so waking late never
     * lowers the average rate). The sender waits until a whole batch is due (sleeping, or
     * spinning for the last few microseconds), then sends everything due, up to TX_BATCH, in
     * one sendmmsg: no packet leaves before its time, and one that is late (after a slow wake
     * up) goes out in the next call. */
    long long total = rate > 0 ? (long long)(rate * seconds + 0.5) : -1; /* round() */
    long long pos = 0, sent = 0, errors = 0;
    int flow = 0;
    int64_t start = now_ns(), end_ns = start + (int64_t)(seconds * 1e9), t = start;
    double ns_per_pkt = rate > 0 ? 1e9 / rate : 0;
    /* Packets per sendmmsg: what falls due in BATCH_NS, 1..TX_BATCH (1 below 20,000 pps,
     * 32 from 640,000 pps): bursts stay under 50 us, system calls per packet fall with rate. */
    long long batch = (long long)(rate * BATCH_NS * 1e-9 + 0.5);
    if (batch < 1)
        batch = 1;
    if (batch > TX_BATCH)
        batch = TX_BATCH;
    while (!stop_requested) {
        int want;
        t = now_ns();
        if (total < 0) { /* --rate 0: as fast as possible until the time is up */
            if (t >= end_ns)
                break;
            want = TX_BATCH;
        } else {
            if (pos >= total)
                break;
            long long due = (long long)((double)(t - start) / ns_per_pkt) + 1;
            if (due > total)
                due = total;
            if (due - pos < batch && due < total) { /* wait until a batch is due */
                long long last = pos + batch - 1 < total ? pos + batch - 1 : total - 1;
                int64_t next = start + (int64_t)((double)last * ns_per_pkt);
                if (next - t > SPIN_NS) {
                    struct timespec ts = {(time_t)(next / 1000000000LL),
                                          (long)(next % 1000000000LL)};
                    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
                }
                continue;
            }
            want = due - pos > TX_BATCH ? TX_BATCH : (int)(due - pos);
        }
        if (ndports > 1) { /* packet pos + i goes to port + (pos + i) % ndports */
            int d = (int)(pos % ndports);
            for (int i = 0; i < want; i++) {
                uint16_t p = htons((uint16_t)(port + d));
                if (a.family == AF_INET6)
                    ((struct sockaddr_in6 *)&names[i])->sin6_port = p;
                else
                    ((struct sockaddr_in *)&names[i])->sin_port = p;
                if (++d == ndports)
                    d = 0;
            }
        }
        if (ls.fd >= 0)
            for (int i = 0; i < want; i++)
                msgs[i].msg_hdr.msg_iov = &ls.iov[flow];
        int n = sendmmsg(ls.fd >= 0 ? ls.fd : fds[flow], msgs, (unsigned)want, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != ENOBUFS && errno != ECONNREFUSED &&
                errno != EHOSTUNREACH && errno != ENETUNREACH && errno != EPERM)
                sys_error("sendmmsg");
            n = 0; /* count the first packet of the batch as lost and go on with the rest */
            errors++;
            pos++;
        }
        sent += n;
        pos += n;
        if (++flow == nflows)
            flow = 0;
    }
    double secs = (double)(now_ns() - start) * 1e-9;
    struct sockaddr_storage la; /* the first flow's source port, as bound (0: never sent) */
    socklen_t lal = sizeof la;
    int lport = 0;
    if (getsockname(fds[0], (struct sockaddr *)&la, &lal) == 0)
        lport = ntohs(la.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&la)->sin6_port
                                               : ((struct sockaddr_in *)&la)->sin_port);
    printf("{\"sent\":%lld,\"errors\":%lld,\"seconds\":%.6f,\"rate\":%.1f,\"target\":%.15g,"
           "\"size\":%d,\"flows\":%d,\"dst_ports\":%d,\"src_port\":%d,\"frames\":%s}\n",
           sent, errors, secs, secs > 0 ? (double)sent / secs : 0.0, rate, size, nflows, ndports,
           lport, ls.fd >= 0 ? "true" : "false");
    fflush(stdout);
    for (int f = 0; f < nflows; f++)
        close(fds[f]);
    link_sender_close(&ls);
    free(fds);
    free(payload);
    return 0;
}
