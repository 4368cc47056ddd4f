/* hp-traffic's shell: errors, signals, options and addresses shared by every subcommand, the
 * usage text and main(), which dispatches to a subcommand (see hp_traffic.h for the tool). */
#include "hp_traffic.h"

#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <sched.h>
#include <stdarg.h>
#include <sys/resource.h>

const char *prog_sub = "hp-traffic";

/* ---- errors and small helpers ------------------------------------------------------------------ */
void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog_sub);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see hp-traffic --help)\n");
    va_end(ap);
    exit(2);
}

void sys_error(const char *fmt, ...)
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

volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* SIGTERM/SIGINT set stop_requested and interrupt blocking calls (no SA_RESTART). Servers block
 * both signals and unblock them only inside ppoll/epoll_pwait (`wait_mask`), so a signal can
 * never slip in between checking the flag and going to sleep. */
sigset_t wait_mask;

void install_signals(int block)
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

void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        sys_error("fcntl(O_NONBLOCK)");
}

/* ---- options ----------------------------------------------------------------------------------- */
static int opt_index(const struct opts *o, const char *name)
{
    for (int i = 0; o->allowed[i]; i++)
        if (strcmp(o->allowed[i], name) == 0)
            return i;
    return -1;
}

void parse_opts(struct opts *o, int argc, char **argv)
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

const char *opt_str(const struct opts *o, const char *name, const char *def)
{
    int k = opt_index(o, name);
    const char *v = k >= 0 ? o->val[k] : NULL;
    if (!v && !def)
        usage_error("option --%s is required", name);
    return v ? v : def;
}

long long opt_int(const struct opts *o, const char *name, long long lo, long long hi,
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

double opt_num(const struct opts *o, const char *name, double lo, double hi, const char *def)
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

struct addr opt_addr(const struct opts *o, const char *name, int port, int socktype)
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

void apply_cpu(const struct opts *o)
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

void ready(void)
{
    fputs("READY\n", stdout);
    fflush(stdout);
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
