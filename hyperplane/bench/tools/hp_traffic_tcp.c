/* hp-traffic's TCP subcommands: tcp-server (an epoll echo server, the peer of both clients),
 * conn-rate (new connections per second: connect, one byte each way, close with RST) and rr
 * (request/response round-trip latency on one connection). */
#include "hp_traffic.h"

#include <netinet/tcp.h>
#include <sys/epoll.h>

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

int cmd_tcp_server(int argc, char **argv)
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

int cmd_conn_rate(int argc, char **argv)
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

int cmd_rr(int argc, char **argv)
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
