/* hp-traffic: the small traffic generator of `hyperplane bench`.
 *
 * Python cannot send a million 64-byte datagrams a second or open tens of thousands of TCP
 * connections a second, so the benchmark would measure its own generator instead of the NAT.
 * This tool does the per-packet work in C with batched system calls (sendmmsg/recvmmsg, epoll)
 * and reports one JSON object line on stdout; hyperplane/bench/traffic.py builds and drives it.
 *
 *   hp-traffic udp-sink   --bind ADDR --port P [--seconds 30] [--idle-ms 500]
 *   hp-traffic udp-send   --dst ADDR --port P --rate PPS --seconds S [--size 64] [--flows 1]
 *                         [--dst-ports 1] [--src-port 0] [--link IF --next-hop-mac MAC]
 *   hp-traffic tcp-server --bind ADDR --port P [--backlog 4096]
 *   hp-traffic conn-rate  --dst ADDR --port P --count N [--concurrency 64] [--seconds 30]
 *   hp-traffic rr         --dst ADDR --port P [--count 10000] [--size 64] [--warmup 100]
 *   every subcommand: [--cpu N]  (pin to CPU N; -1 = no pinning)
 *
 * Conventions: addresses are numeric IPv4/IPv6. Servers and sinks print "READY" once bound.
 * Exit status 2: bad arguments (the option is named on stderr); 1: a system error (strerror on
 * stderr); 0 otherwise, also after SIGTERM/SIGINT (servers and sinks print their JSON first).
 *
 * Build: cc -O2 -Wall -Wextra -std=gnu11 -o hp-traffic hp_traffic.c   (libc + Linux headers)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif

static const char *prog_sub = "hp-traffic";

/* ---- errors and small helpers --------------------------------------------------------------- */
__attribute__((noreturn, format(printf, 1, 2))) static void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog_sub);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see hp-traffic --help)\n");
    va_end(ap);
    exit(2);
}

__attribute__((noreturn, format(printf, 1, 2))) static void sys_error(const char *fmt, ...)
{
    int err = errno;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog_sub);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, ": %s\n", strerror(err));
    va_end(ap);
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* SIGTERM/SIGINT set stop_requested and interrupt blocking calls (no SA_RESTART). Servers block
 * both signals and unblock them only inside ppoll/epoll_pwait (`wait_mask`), so a signal can
 * never slip in between checking the flag and going to sleep. */
static sigset_t wait_mask;

static void install_signals(int block)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (block) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        sigprocmask(SIG_BLOCK, &set, &wait_mask);
        sigdelset(&wait_mask, SIGTERM);
        sigdelset(&wait_mask, SIGINT);
    }
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        sys_error("fcntl(O_NONBLOCK)");
}

/* ---- options ----------------------------------------------------------------------------------- */
#define MAX_OPTS 16

struct opts {
    const char *const *allowed; /* NULL-terminated option names without the dashes */
    const char *val[MAX_OPTS];
};

static int opt_index(const struct opts *o, const char *name)
{
    for (int i = 0; o->allowed[i]; i++)
        if (strcmp(o->allowed[i], name) == 0)
            return i;
    return -1;
}

static void parse_opts(struct opts *o, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0)
            usage_error("unexpected argument '%s' (options are --name VALUE)", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        char buf[64];
        const char *value;
        if (eq) { /* --name=value */
            size_t n = (size_t)(eq - name);
            if (n >= sizeof buf)
                usage_error("unknown option '%s'", a);
            memcpy(buf, name, n);
            buf[n] = 0;
            name = buf;
            value = eq + 1;
        } else {
            if (i + 1 >= argc)
                usage_error("option --%s needs a value", name);
            value = argv[++i];
        }
        int k = opt_index(o, name);
        if (k < 0)
            usage_error("unknown option --%s", name);
        o->val[k] = value;
    }
}

static const char *opt_str(const struct opts *o, const char *name, const char *def)
{
    int k = opt_index(o, name);
    const char *v = k >= 0 ? o->val[k] : NULL;
    if (!v && !def)
        usage_error("option --%s is required", name);
    return v ? v : def;
}

static long long opt_int(const struct opts *o, const char *name, long long lo, long long hi,
                         const char *def)
{
    const char *s = opt_str(o, name, def);
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        usage_error("option --%s: '%s' is not an integer", name, s);
    if (v < lo || v > hi)
        usage_error("option --%s: %lld is out of range %lld..%lld", name, v, lo, hi);
    return v;
}

static double opt_num(const struct opts *o, const char *name, double lo, double hi,
                      const char *def)
{
    const char *s = opt_str(o, name, def);
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        usage_error("option --%s: '%s' is not a number", name, s);
    if (v < lo || v > hi)
        usage_error("option --%s: %g is out of range %g..%g", name, v, lo, hi);
    return v;
}

/* A numeric address and port (getaddrinfo AI_NUMERICHOST); `name` is the option for errors. */
struct addr {
    struct sockaddr_storage ss;
    socklen_t len;
    int family;
};

static struct addr opt_addr(const struct opts *o, const char *name, int port, int socktype)
{
    const char *host = opt_str(o, name, NULL);
    char portbuf[8];
    struct addrinfo hints, *res;
    struct addr a;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = socktype;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    snprintf(portbuf, sizeof portbuf, "%d", port);
    int rc = getaddrinfo(host, portbuf, &hints, &res);
    if (rc != 0)
        usage_error("option --%s: '%s' is not a numeric IPv4/IPv6 address (%s)", name, host,
                    gai_strerror(rc));
    memset(&a, 0, sizeof a);
    memcpy(&a.ss, res->ai_addr, res->ai_addrlen);
    a.len = res->ai_addrlen;
    a.family = res->ai_family;
    freeaddrinfo(res);
    return a;
}

static void apply_cpu(const struct opts *o)
{
    int cpu = (int)opt_int(o, "cpu", -1, CPU_SETSIZE - 1, "-1");
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        sys_error("--cpu %d: sched_setaffinity", cpu);
}

static void ready(void)
{
    fputs("READY\n", stdout);
    fflush(stdout);
}

/* ---- udp-sink ---------------------------------------------------------------------------------- */
#define RX_BATCH 64
#define RX_BUF 2048
#define BUSY_S 0.002 /* a datagram within the last 2 ms: traffic is flowing */
#define NAP_S 0.0001 /* then look again every 100 us (16 MiB of buffer holds ~20,000 datagrams) */

static int cmd_udp_sink(int argc, char **argv)
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
/* --link: whole Ethernet frames on a packet socket. */
/* A UDP socket's send path (route, neighbour, IP output) costs more than half of what a 64-byte
 * datagram costs its sender; on a veth the receiver's work lands on the sender's CPU as well.
 * With --link the datagrams are built once, checksums and all, and sent as whole frames on a
 * packet socket: the same bytes on the wire, at a fraction of the sender's cost, so the
 * generator can offer more than the forwarder under test can take. */
#define FRAME_MAX 1514 /* Ethernet header + the largest --size with its IP and UDP headers */

static uint32_t csum_add(uint32_t sum, const void *data, size_t len)
{
    const uint8_t *b = data;
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(b[i] << 8 | b[i + 1]);
    if (len & 1)
        sum += (uint32_t)(b[len - 1] << 8);
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void parse_mac(const char *s, uint8_t mac[6])
{
    unsigned v[6];
    char tail;
    if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
               &tail) != 6)
        usage_error("option --next-hop-mac: '%s' is not a MAC address (aa:bb:cc:dd:ee:ff)", s);
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)v[i];
}

/* The frame a connected UDP socket `fd` would send to `dst`: Ethernet (src = the link's MAC,
 * dst = the next hop's), IPv4 (DF, TTL 64, header checksum) or IPv6 (hop limit 64), UDP with
 * its checksum (mandatory over IPv6). Returns the frame's length. */
static size_t build_frame(uint8_t *out, int fd, const struct addr *dst, const uint8_t src_mac[6],
                          const uint8_t dst_mac[6], const char *payload, int size)
{
    struct sockaddr_storage la;
    socklen_t lal = sizeof la;
    if (getsockname(fd, (struct sockaddr *)&la, &lal) < 0)
        sys_error("getsockname");
    memcpy(out, dst_mac, 6);
    memcpy(out + 6, src_mac, 6);
    uint8_t *ip = out + 14, *udp;
    uint16_t ulen = (uint16_t)(8 + size), sport, dport;
    uint32_t sum;
    if (dst->family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)&la, *d6 = (const void *)&dst->ss;
        out[12] = 0x86, out[13] = 0xdd;
        memset(ip, 0, 40);
        ip[0] = 0x60;
        ip[4] = (uint8_t)(ulen >> 8), ip[5] = (uint8_t)ulen;
        ip[6] = IPPROTO_UDP, ip[7] = 64;
        memcpy(ip + 8, &s6->sin6_addr, 16);
        memcpy(ip + 24, &d6->sin6_addr, 16);
        udp = ip + 40;
        sport = s6->sin6_port, dport = d6->sin6_port;
        sum = csum_add(0, ip + 8, 32) + ulen + IPPROTO_UDP;
    } else {
        const struct sockaddr_in *s4 = (const void *)&la, *d4 = (const void *)&dst->ss;
        uint16_t tot = (uint16_t)(20 + ulen);
        out[12] = 0x08, out[13] = 0x00;
        memset(ip, 0, 20);
        ip[0] = 0x45;
        ip[2] = (uint8_t)(tot >> 8), ip[3] = (uint8_t)tot;
        ip[6] = 0x40; /* DF: an atomic datagram, its ID may stay 0 (RFC 6864) */
        ip[8] = 64, ip[9] = IPPROTO_UDP;
        memcpy(ip + 12, &s4->sin_addr, 4);
        memcpy(ip + 16, &d4->sin_addr, 4);
        uint16_t hc = csum_fold(csum_add(0, ip, 20));
        ip[10] = (uint8_t)(hc >> 8), ip[11] = (uint8_t)hc;
        udp = ip + 20;
        sport = s4->sin_port, dport = d4->sin_port;
        sum = csum_add(0, ip + 12, 8) + ulen + IPPROTO_UDP;
    }
    memcpy(udp, &sport, 2);
    memcpy(udp + 2, &dport, 2);
    udp[4] = (uint8_t)(ulen >> 8), udp[5] = (uint8_t)ulen;
    udp[6] = udp[7] = 0;
    memcpy(udp + 8, payload, (size_t)size);
    uint16_t uc = csum_fold(csum_add(sum, udp, ulen));
    if (uc == 0)
        uc = 0xffff; /* 0 means "no checksum" */
    udp[6] = (uint8_t)(uc >> 8), udp[7] = (uint8_t)uc;
    return (size_t)(udp + 8 + size - out);
}

#define TX_BATCH 32
#define BATCH_NS 50000.0 /* a paced batch spans at most ~50 us of the schedule */
#define SPIN_NS 10000LL /* closer than this to the next due batch: spin rather than sleep */

static int cmd_udp_send(int argc, char **argv)
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
    /* --link IF --next-hop-mac MAC: whole frames on IF's packet socket (see build_frame) */
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
     * address); one packet socket sends flow f's frame, frames[f] */
    int raw = -1;
    uint8_t *frames = NULL;
    struct iovec *frame_iov = NULL;
    struct sockaddr_ll sll;
    if (*link) {
        uint8_t src_mac[6], dst_mac[6];
        parse_mac(nh_mac, dst_mac);
        raw = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: this socket receives nothing */
        if (raw < 0)
            sys_error("socket(AF_PACKET) for --link %s (needs CAP_NET_RAW)", link);
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        if (strlen(link) >= sizeof ifr.ifr_name)
            usage_error("option --link: '%s' is too long for an interface name", link);
        strcpy(ifr.ifr_name, link);
        if (ioctl(raw, SIOCGIFHWADDR, &ifr) < 0)
            sys_error("--link %s: no such interface here (SIOCGIFHWADDR)", link);
        memcpy(src_mac, ifr.ifr_hwaddr.sa_data, 6);
        memset(&sll, 0, sizeof sll);
        sll.sll_family = AF_PACKET;
        sll.sll_ifindex = (int)if_nametoindex(link);
        sll.sll_protocol = htons(a.family == AF_INET6 ? ETH_P_IPV6 : ETH_P_IP);
        int one = 1;
        setsockopt(raw, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one); /* best effort */
        int sndbuf = 4 << 20;
        if (setsockopt(raw, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0)
            setsockopt(raw, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        frames = malloc((size_t)nflows * FRAME_MAX);
        frame_iov = calloc((size_t)nflows, sizeof *frame_iov);
        if (!frames || !frame_iov)
            sys_error("malloc");
        for (int f = 0; f < nflows; f++) {
            uint8_t *frame = frames + (size_t)f * FRAME_MAX;
            frame_iov[f].iov_base = frame;
            frame_iov[f].iov_len = build_frame(frame, fds[f], &a, src_mac, dst_mac, payload,
                                               size);
        }
        for (int i = 0; i < TX_BATCH; i++) {
            msgs[i].msg_hdr.msg_name = &sll;
            msgs[i].msg_hdr.msg_namelen = sizeof sll;
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
        if (raw >= 0)
            for (int i = 0; i < want; i++)
                msgs[i].msg_hdr.msg_iov = &frame_iov[flow];
        int n = sendmmsg(raw >= 0 ? raw : fds[flow], msgs, (unsigned)want, MSG_DONTWAIT);
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
           lport, raw >= 0 ? "true" : "false");
    fflush(stdout);
    for (int f = 0; f < nflows; f++)
        close(fds[f]);
    if (raw >= 0)
        close(raw);
    free(fds);
    free(payload);
    free(frames);
    free(frame_iov);
    return 0;
}

/* ---- tcp-server -------------------------------------------------------------------------------- */
struct echo_conn {
    int fd;
    char *pend; /* bytes read but not yet echoed (the peer reads slower than it writes) */
    size_t plen, poff;
};

static void echo_close(int ep, struct echo_conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pend);
    free(c);
}

static int cmd_tcp_server(int argc, char **argv)
{
    static const char *const allowed[] = {"bind", "port", "backlog", "cpu", NULL};
    struct opts o = {allowed, {0}};
    parse_opts(&o, argc, argv);
    int port = (int)opt_int(&o, "port", 1, 65535, NULL);
    struct addr a = opt_addr(&o, "bind", port, SOCK_STREAM);
    int backlog = (int)opt_int(&o, "backlog", 1, 1 << 20, "4096");
    apply_cpu(&o);
    install_signals(1);
    raise_nofile();

    int lfd = socket(a.family, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    if (lfd < 0)
        sys_error("socket");
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&a.ss, a.len) < 0)
        sys_error("bind --bind %s --port %d", opt_str(&o, "bind", NULL), port);
    if (listen(lfd, backlog) < 0)
        sys_error("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        sys_error("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}; /* NULL: the listener */
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
        sys_error("epoll_ctl");
    unsigned long long accepted = 0, bytes = 0;
    static char buf[65536];
    struct epoll_event evs[256];
    ready();

    while (!stop_requested) {
        int n = epoll_pwait(ep, evs, 256, -1, &wait_mask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            sys_error("epoll_pwait");
        }
        for (int i = 0; i < n; i++) {
            struct echo_conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) {
                        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                            break;
                        if (errno == EMFILE || errno == ENFILE || errno == ENOMEM ||
                            errno == ENOBUFS) {
                            fprintf(stderr, "%s: accept: %s\n", prog_sub, strerror(errno));
                            break;
                        }
                        sys_error("accept4");
                    }
                    accepted++;
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct echo_conn *nc = calloc(1, sizeof *nc);
                    if (!nc)
                        sys_error("calloc");
                    nc->fd = cfd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev) < 0)
                        sys_error("epoll_ctl");
                }
                continue;
            }
            if (c->pend) { /* writable again: flush the backlog, then read again */
                ssize_t w = send(c->fd, c->pend + c->poff, c->plen - c->poff, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    echo_close(ep, c);
                    continue;
                }
                if (w > 0)
                    c->poff += (size_t)w;
                if (c->poff == c->plen) {
                    free(c->pend);
                    c->pend = NULL;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
                }
                continue;
            }
            ssize_t r = recv(c->fd, buf, sizeof buf, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { /* closed or reset */
                echo_close(ep, c);
                continue;
            }
            if (r < 0)
                continue;
            bytes += (unsigned long long)r;
            ssize_t w = send(c->fd, buf, (size_t)r, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EINTR) {
                echo_close(ep, c);
                continue;
            }
            if (w < 0)
                w = 0;
            if (w < r) { /* keep the rest and wait until the socket is writable */
                c->plen = (size_t)(r - w);
                c->poff = 0;
                c->pend = malloc(c->plen);
                if (!c->pend)
                    sys_error("malloc");
                memcpy(c->pend, buf + w, c->plen);
                struct epoll_event cev = {.events = EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
        }
    }
    printf("{\"accepted\":%llu,\"bytes\":%llu}\n", accepted, bytes);
    fflush(stdout);
    return 0;
}

/* ---- conn-rate --------------------------------------------------------------------------------- */
#define ATTEMPT_NS 2000000000LL /* connect + 1-byte echo must finish within 2 s */

struct attempt {
    int fd; /* -1: slot free */
    int connected;
    int64_t deadline;
};

static int cmd_conn_rate(int argc, char **argv)
{
    static const char *const allowed[] = {"dst", "port", "count", "concurrency", "seconds",
                                          "cpu", NULL};
    struct opts o = {allowed, {0}};
    parse_opts(&o, argc, argv);
    int port = (int)opt_int(&o, "port", 1, 65535, NULL);
    struct addr a = opt_addr(&o, "dst", port, SOCK_STREAM);
    long long count = opt_int(&o, "count", 1, 1000000000LL, NULL);
    int conc = (int)opt_int(&o, "concurrency", 1, 65536, "64");
    double max_s = opt_num(&o, "seconds", 0.001, 86400, "30");
    apply_cpu(&o);
    install_signals(0);
    raise_nofile();

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        sys_error("epoll_create1");
    struct attempt *slots = calloc((size_t)conc, sizeof *slots);
    struct epoll_event *evs = calloc((size_t)conc, sizeof *evs);
    if (!slots || !evs)
        sys_error("calloc");
    for (int i = 0; i < conc; i++)
        slots[i].fd = -1;
    long long started = 0, completed = 0, failed = 0;
    int inflight = 0;
    const struct linger rst = {1, 0}; /* close with a RST: no TIME_WAIT, conntrack entry closed */
    int64_t t0 = now_ns(), end_ns = t0 + (int64_t)(max_s * 1e9), t_done = 0, t_any = 0;
    int64_t next_sweep = t0;

#define FINISH(s, ok)                                                                       \
    do {                                                                                    \
        if (ok)                                                                             \
            setsockopt((s)->fd, SOL_SOCKET, SO_LINGER, &rst, sizeof rst);                   \
        close((s)->fd); /* also removes it from the epoll set */                          \
        (s)->fd = -1;                                                                       \
        inflight--;                                                                         \
        t_any = now_ns();                                                                   \
        if (ok) {                                                                           \
            completed++;                                                                    \
            t_done = t_any;                                                                 \
        } else {                                                                            \
            failed++;                                                                       \
        }                                                                                   \
    } while (0)

    int free_hint = 0;
    while (!stop_requested) {
        int64_t t = now_ns();
        if (t >= end_ns)
            break;
        while (inflight < conc && started < count) { /* top up to the concurrency */
            while (slots[free_hint].fd >= 0)
                free_hint = (free_hint + 1) % conc;
            struct attempt *s = &slots[free_hint];
            started++;
            int fd = socket(a.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                    failed++;
                    continue;
                }
                sys_error("socket");
            }
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            s->fd = fd;
            s->connected = 0;
            s->deadline = now_ns() + ATTEMPT_NS;
            inflight++;
            if (connect(fd, (struct sockaddr *)&a.ss, a.len) < 0 && errno != EINPROGRESS) {
                FINISH(s, 0); /* e.g. EADDRNOTAVAIL: out of source ports */
                continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
                sys_error("epoll_ctl");
        }
        if (inflight == 0)
            break; /* all attempts made and finished */
        int64_t wait_ns = end_ns - t;
        if (wait_ns > 50000000LL)
            wait_ns = 50000000LL; /* look for expired attempts at least every 50 ms */
        int n = epoll_wait(ep, evs, conc, (int)(wait_ns / 1000000LL) + 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            sys_error("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct attempt *s = evs[i].data.ptr;
            if (s->fd < 0)
                continue;
            if (!s->connected) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                    FINISH(s, 0);
                    continue;
                }
                char b = 'x';
                if (send(s->fd, &b, 1, MSG_NOSIGNAL) != 1) {
                    FINISH(s, 0);
                    continue;
                }
                s->connected = 1;
                struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                continue;
            }
            char b;
            ssize_t r = recv(s->fd, &b, 1, 0);
            if (r == 1)
                FINISH(s, 1);
            else if (r == 0 || (errno != EAGAIN && errno != EINTR))
                FINISH(s, 0); /* closed or reset before the echo */
        }
        t = now_ns();
        if (t >= next_sweep) { /* give up on attempts older than 2 s */
            for (int i = 0; i < conc; i++)
                if (slots[i].fd >= 0 && t >= slots[i].deadline)
                    FINISH(&slots[i], 0);
            next_sweep = t + 50000000LL;
        }
    }
    /* out of time (or signalled): unfinished attempts and those never started count as failed */
    for (int i = 0; i < conc; i++)
        if (slots[i].fd >= 0)
            FINISH(&slots[i], 0);
    long long unstarted = count - started;
    failed += unstarted;
#undef FINISH
    int64_t t_end = t_done ? t_done : t_any;
    double secs = t_end > t0 ? (double)(t_end - t0) * 1e-9 : 0.0;
    printf("{\"completed\":%lld,\"failed\":%lld,\"seconds\":%.6f,\"rate\":%.1f,"
           "\"concurrency\":%d,\"unstarted\":%lld}\n",
           completed, failed, secs, secs > 0 ? (double)completed / secs : 0.0, conc, unstarted);
    fflush(stdout);
    close(ep);
    free(slots);
    free(evs);
    return 0;
}

/* ---- rr ---------------------------------------------------------------------------------------- */
static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Nearest-rank percentile of sorted samples: the ceil(p/100 * n)-th smallest. */
static double nearest_rank(const double *v, long n, double p)
{
    double r = p / 100.0 * (double)n;
    long rank = (long)r;
    if ((double)rank < r) /* ceil() without libm */
        rank++;
    if (rank < 1)
        rank = 1;
    return v[rank - 1];
}

static int cmd_rr(int argc, char **argv)
{
    static const char *const allowed[] = {"dst", "port", "count", "size", "warmup", "cpu",
                                          NULL};
    struct opts o = {allowed, {0}};
    parse_opts(&o, argc, argv);
    int port = (int)opt_int(&o, "port", 1, 65535, NULL);
    struct addr a = opt_addr(&o, "dst", port, SOCK_STREAM);
    long count = (long)opt_int(&o, "count", 1, 100000000, "10000");
    int size = (int)opt_int(&o, "size", 1, 1 << 20, "64");
    long warmup = (long)opt_int(&o, "warmup", 0, 100000000, "100");
    apply_cpu(&o);
    install_signals(0);

    int fd = socket(a.family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        sys_error("socket");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tmo = {5, 0}; /* a dead server or a black hole ends the run, never hangs it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof tmo);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tmo, sizeof tmo);
    if (connect(fd, (struct sockaddr *)&a.ss, a.len) < 0)
        sys_error("connect --dst %s --port %d", opt_str(&o, "dst", NULL), port);
    char *req = malloc((size_t)size), *resp = malloc((size_t)size);
    double *us = malloc((size_t)count * sizeof *us);
    if (!req || !resp || !us)
        sys_error("malloc");
    for (int i = 0; i < size; i++)
        req[i] = (char)('A' + i % 26);

    long done = 0;
    for (long i = 0; i < warmup + count && !stop_requested; i++) {
        int64_t t = now_ns();
        for (size_t off = 0; off < (size_t)size;) {
            ssize_t w = send(fd, req + off, (size_t)size - off, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR && !stop_requested)
                    continue;
                sys_error("send (transaction %ld)", i);
            }
            off += (size_t)w;
        }
        for (size_t off = 0; off < (size_t)size;) {
            ssize_t r = recv(fd, resp + off, (size_t)size - off, 0);
            if (r == 0) {
                errno = ECONNRESET;
                sys_error("recv (transaction %ld): the server closed the connection", i);
            }
            if (r < 0) {
                if (errno == EINTR && !stop_requested)
                    continue;
                sys_error("recv (transaction %ld)", i);
            }
            off += (size_t)r;
        }
        if (i >= warmup)
            us[done++] = (double)(now_ns() - t) / 1000.0;
    }
    close(fd);
    free(req);
    free(resp);
    if (done == 0) {
        printf("{\"count\":0}\n");
        fflush(stdout);
        free(us);
        return 0;
    }
    double sum = 0;
    for (long i = 0; i < done; i++)
        sum += us[i];
    qsort(us, (size_t)done, sizeof *us, cmp_double);
    printf("{\"count\":%ld,\"p50_us\":%.3f,\"p90_us\":%.3f,\"p99_us\":%.3f,\"min_us\":%.3f,"
           "\"max_us\":%.3f,\"mean_us\":%.3f}\n",
           done, nearest_rank(us, done, 50), nearest_rank(us, done, 90),
           nearest_rank(us, done, 99), us[0], us[done - 1], sum / (double)done);
    fflush(stdout);
    free(us);
    return 0;
}

/* ---- main -------------------------------------------------------------------------------------- */
static const char usage[] =
    "usage: hp-traffic SUBCOMMAND [--option VALUE ...]\n"
    "  udp-sink   --bind ADDR --port P [--seconds 30] [--idle-ms 500]\n"
    "  udp-send   --dst ADDR --port P --rate PPS --seconds S [--size 64] [--flows 1]\n"
    "             [--dst-ports 1] [--src-port 0]\n"
    "             (--rate 0: as fast as possible; --dst-ports N: packet i goes to port\n"
    "             P + i mod N; --src-port S: flow f sends from port S + f, 0: any)\n"
    "  tcp-server --bind ADDR --port P [--backlog 4096]\n"
    "  conn-rate  --dst ADDR --port P --count N [--concurrency 64] [--seconds 30]\n"
    "  rr         --dst ADDR --port P [--count 10000] [--size 64] [--warmup 100]\n"
    "  all: [--cpu N] pins to CPU N (-1: no pinning). Output: one JSON line on stdout;\n"
    "  servers and sinks print READY first. Exit 2: bad arguments; 1: system error.\n";

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"udp-sink", cmd_udp_sink}, {"udp-send", cmd_udp_send},
                {"tcp-server", cmd_tcp_server}, {"conn-rate", cmd_conn_rate},
                {"rr", cmd_rr}};
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (strcmp(argv[1], cmds[i].name) == 0) {
            static char name[64];
            snprintf(name, sizeof name, "hp-traffic %s", cmds[i].name);
            prog_sub = name;
            return cmds[i].fn(argc - 2, argv + 2);
        }
    }
    fprintf(stderr, "hp-traffic: unknown subcommand '%s'\n%s", argv[1], usage);
    return 2;
}
