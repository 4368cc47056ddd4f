/* hp-traffic: the small traffic generator of `hyperplane bench`.
 *
 * Python cannot send a million 64-byte datagrams a second or open tens of thousands of TCP
 * connections a second, so the benchmark would measure its own generator instead of the NAT.
 * This tool does the per-packet work in C with batched system calls (sendmmsg/recvmmsg, epoll)
 * and reports one JSON object line on stdout; hyperplane/traffic.py builds and drives it.
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
 * Files (this header declares what they share):
 *   hp_traffic_main.c    errors, signals, options and addresses; the usage text and main()
 *   hp_traffic_udp.c     udp-sink, udp-send (paced sendmmsg on UDP sockets)
 *   hp_traffic_frames.c  udp-send --link: prebuilt frames, checksums and all, on a packet socket
 *   hp_traffic_tcp.c     tcp-server (echo), conn-rate, rr
 *
 * Build: cc -O2 -Wall -Wextra -std=gnu11 -o hp-traffic hp_traffic_*.c   (libc + Linux headers)
 */
#ifndef HP_TRAFFIC_H
#define HP_TRAFFIC_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <linux/if_packet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif

/* ---- errors and small helpers (hp_traffic_main.c) ---------------------------------------------- */
extern const char *prog_sub; /* "hp-traffic SUBCOMMAND": how errors name the tool */

/* Print "prog_sub: message" on stderr and exit 2 (bad arguments) ... */
__attribute__((noreturn, format(printf, 1, 2))) void usage_error(const char *fmt, ...);
/* ... or "prog_sub: message: strerror(errno)" and exit 1 (a system error). */
__attribute__((noreturn, format(printf, 1, 2))) void sys_error(const char *fmt, ...);

/* Monotonic clock; inline, because the send and receive loops read it per batch. */
static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

extern volatile sig_atomic_t stop_requested; /* set by SIGTERM/SIGINT */
extern sigset_t wait_mask; /* what servers unblock while they wait (see install_signals) */

void install_signals(int block);
void raise_nofile(void);
void set_nonblock(int fd);

/* ---- options (hp_traffic_main.c) --------------------------------------------------------------- */
#define MAX_OPTS 16

struct opts {
    const char *const *allowed; /* NULL-terminated option names without the dashes */
    const char *val[MAX_OPTS];
};

void parse_opts(struct opts *o, int argc, char **argv);
const char *opt_str(const struct opts *o, const char *name, const char *def);
long long opt_int(const struct opts *o, const char *name, long long lo, long long hi,
                  const char *def);
double opt_num(const struct opts *o, const char *name, double lo, double hi, const char *def);

/* A numeric address and port (getaddrinfo AI_NUMERICHOST); `name` is the option for errors. */
struct addr {
    struct sockaddr_storage ss;
    socklen_t len;
    int family;
};

struct addr opt_addr(const struct opts *o, const char *name, int port, int socktype);
void apply_cpu(const struct opts *o);
void ready(void);

/* ---- udp-send --link (hp_traffic_frames.c) ----------------------------------------------------- */
/* One packet socket on the link and flow f's whole frame in iov[f]. */
struct link_sender {
    int fd; /* the packet socket; -1: no --link */
    uint8_t *frames; /* nflows frames of FRAME_MAX bytes */
    struct iovec *iov; /* iov[f]: flow f's frame and its length */
    struct sockaddr_ll sll; /* the link, as each message's msg_name */
};

/* Open the packet socket on `link` and build one frame per flow to `dst` from the next hop
 * `nh_mac`, each as flow f's UDP socket fds[f] would send `payload` (`size` bytes). */
void link_sender_open(struct link_sender *ls, const char *link, const char *nh_mac,
                      const struct addr *dst, const int *fds, int nflows, const char *payload,
                      int size);
void link_sender_close(struct link_sender *ls);

/* ---- subcommands: (argc, argv) after the subcommand's name; the exit status -------------------- */
int cmd_udp_sink(int argc, char **argv); /* hp_traffic_udp.c */
int cmd_udp_send(int argc, char **argv);
int cmd_tcp_server(int argc, char **argv); /* hp_traffic_tcp.c */
int cmd_conn_rate(int argc, char **argv);
int cmd_rr(int argc, char **argv);

#endif
