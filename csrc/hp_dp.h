/* hp_dp.h - the data path: links, engines and the event loop that moves frames between them.
 *
 *   environment link (TAP fd or veth)           ENI link (veth into the subnet)
 *   rx -> ARP/NDP for the gateway, or           rx -> ARP/NDP for the ENI addresses, or
 *         source check -> engine ORIG                  engine REPLY -> env lookup
 *         -> next hop (on-link or router)              -> env link
 *         -> neighbour -> tx on the ENI link           -> neighbour -> tx on the env link
 *
 * A group is one engine (the connection table of one ENI key: subnet + security groups) with
 * its ENI link; every environment link belongs to one group.
 *
 * A NAT gateway is a group too: its "inside" link (the private side, in a VPC subnet) takes
 * the place of the environment links and its ENI link is the public side:
 *
 *   inside link rx -> engine ORIG -> ENI link (next hop on-link or the subnet's router)
 *   ENI link rx    -> engine REPLY -> inside link (next hop: the destination when it is in the
 *                     inside subnet, else the inside router) The loop (hp_dp_poll) waits on all
 * links and on "watched" fds of the caller (control socket, signal wakeup pipe) and returns to
 * the caller only when one of those is readable, a signal interrupted it, or the time is up:
 * no Python runs per packet.
 *
 * Those are the two columns above: with the inbound worker (hp_dp_start_inbound, [datapath]
 * inbound_cpus) the right-hand one, everything received on ENI links, runs in a second thread
 * while hp_dp_poll runs. The engines and each link's neighbours and transmit batch are then
 * shared, under a mutex each; the drop counters are atomic.
 *
 * With workers (hp_dp_start_workers, [datapath] workers = N) the split is by port instead:
 * N threads, each with its own socket on every veth link (PACKET_FANOUT, a classic BPF program
 * per link steers by destination port on ENI links and by source port elsewhere) and its own
 * engine per group (a shard: the ports p of every ENI with (p >> 1) % N == its index), so a
 * connection's packets both ways meet in one thread and its engine needs no lock. What steering
 * cannot place (a TAP's frames, all read by worker 0; a later fragment; an ICMP error; a packet
 * the kernel put elsewhere) is handed to its owner over a single-producer ring
 * (hp_dp_steer.c). Only the links' neighbour tables stay shared, under their mutex.
 */
#ifndef HP_DP_H
#define HP_DP_H

#include "hp_engine.h"
#include "hp_io.h"
#include <pthread.h>
#include "hp_neigh.h"

#define HP_DP_MAX_LINKS 256
#define HP_DP_MAX_GROUPS 64
#define HP_DP_MAX_OWN 16     /* own addresses per family on one link */
#define HP_DP_MAX_WATCH 8
#define HP_DP_TICK 0.05      /* neighbour timers and engine expiry run this often (s) */
#define HP_DP_ENV_SLOTS 1024 /* address -> environment link, open addressing */
#define HP_DP_MAX_WORKERS 16

/* How many threads move packets: one, the loop and the inbound worker (split by direction),
 * or N workers (split by port). */
enum hp_dp_mt { HP_MT_NONE = 0, HP_MT_INBOUND = 1, HP_MT_WORKERS = 2 };

enum hp_link_role { HP_ROLE_ENV = 1, HP_ROLE_ENI = 2, HP_ROLE_INSIDE = 3 };

/* An environment link's function, in Lambda's words (GetFunction's State): only an Active
 * function's packets are forwarded. Pending: its ENI is being created; Inactive: its ENI was
 * reclaimed after the idle period; Detached: no VpcConfig, no path into the VPC at all. */
enum hp_link_state {
    HP_LINK_ACTIVE = 0,
    HP_LINK_PENDING = 1,
    HP_LINK_INACTIVE = 2,
    HP_LINK_DETACHED = 3,
    HP_LINK_N_STATES
};

/* Drops the data path counts itself (the engine counts its own by hp_reason): enum
 * hp_dp_reason (HP_D_RUNT ... HP_D_COUNT) and its labels are in hp_drop_reasons.h. */

typedef struct {
    int role, group, index;
    hp_port port;
    uint8_t mac[6];  /* ours on this link: the gateway's (env) or the ENI's (ENI link) */
    /* our addresses on this link (the gateway's, or the group's ENI addresses) */
    uint8_t own4[HP_DP_MAX_OWN][4], own6[HP_DP_MAX_OWN][16];
    uint32_t n_own4, n_own6;
    /* env link: the environment's addresses */
    uint8_t env4[4], env6[16];
    uint8_t has_env4, has_env6;
    /* env link: the function's state (enum hp_link_state); IPv6 refused (no dual stack) */
    uint8_t state, no_ipv6;
    /* ENI or inside link: the subnet (on-link) and its router (next hop for everything else) */
    uint8_t net4[4], net6[16], router4[4], router6[16];
    uint8_t plen4, plen6, has_net4, has_net6;
    hp_neigh_table neigh;
    uint8_t down; /* the interface is gone; no longer polled (atomic: any worker may see it) */
    /* the port each thread receives and sends with: [0] = &port; the inbound worker's [1] is
     * &port too; with workers, worker w's own socket (a TAP's: a dup of its fd, send only) */
    hp_port *pt[HP_DP_MAX_WORKERS];
    uint64_t arp_in, arp_out, nd_in, nd_out;
    uint64_t blocked; /* env link: IP packets dropped because the function is not Active */
    pthread_mutex_t lock; /* with the inbound worker: neighbours, transmit batch, ARP/NDP */
} hp_link;

typedef struct {
    hp_engine *shard[HP_DP_MAX_WORKERS]; /* worker w's engine; one shared by all without workers */
    int eni_link;    /* -1 until added */
    int inside_link; /* a NAT gateway's private side; -1: replies go to environment links */
    uint8_t rst_unknown_tcp; /* answer a TCP segment of no connection with a RST */
    pthread_mutex_t lock; /* with the inbound worker: the engine, used by both directions */
} hp_group;

struct hp_ho_ring; /* hp_dp_steer.c */
struct hp_fsteer;

/* One thread that moves packets: worker 0 is the one calling hp_dp_poll (Python's). Its
 * counters are written by it alone and read while it is parked. */
typedef struct {
    int id, epfd, wake; /* its epoll set (worker 0: the data path's) and the eventfd that
                         * kicks it (out of its sleep: to park, or a handoff arrived) */
    pthread_t thread;
    uint32_t parked;    /* it touches nothing until run is set again */
    uint32_t sleeping;  /* in epoll_wait: a producer of a handoff kicks it */
    uint32_t failed;    /* it stopped on an error (errno in fail_errno): hp_dp_poll says so */
    int fail_errno;
    double next_tick;
    uint64_t rx_packets, forwarded[2];
    uint64_t handoff_out, handoff_in, handoff_full, spilled;
    struct hp_ho_ring *from[HP_DP_MAX_WORKERS]; /* rings into it, by producer */
    struct hp_fsteer *fsteer; /* owners of fragmented datagrams, from their first fragment */
} hp_worker;

typedef struct {
    int epfd;
    hp_link *links[HP_DP_MAX_LINKS];
    unsigned n_links;
    hp_group groups[HP_DP_MAX_GROUPS];
    unsigned n_groups;
    int env_slot[HP_DP_ENV_SLOTS]; /* (link index + 1) << 1 | is_ipv6; 0 = empty */
    uint8_t env_key[HP_DP_ENV_SLOTS][16];
    int watch_fd[HP_DP_MAX_WATCH];
    unsigned n_watch;
    uint64_t drops[HP_D_COUNT];
    uint64_t rst_sent;
    uint64_t rst_withheld_fragment; /* no RST: a first fragment without ACK (hp_dp_rst.c) */
    double clock_offset; /* the data path's now = CLOCK_MONOTONIC + this (a lab clock) */
    uint32_t ring_frames; /* of every veth link's receive ring opened from now on; 0: default */
    /* Threads: mt (enum hp_dp_mt) and how many (1, 2 with the inbound worker, or N). */
    int mt;
    unsigned n_threads;
    hp_worker wk[HP_DP_MAX_WORKERS];
    uint32_t run;        /* futex word: 1 while hp_dp_poll runs (the other threads with it) */
    uint32_t links_down; /* another thread found a link gone: hp_dp_poll reports it */
    int stop;
    uint16_t fanout_seq;
} hp_dp;

hp_dp *hp_dp_new(void);
void hp_dp_free(hp_dp *dp); /* closes every link's fd */
int hp_dp_add_group(hp_dp *dp, hp_engine *e);
/* Add a link; kind HP_PORT_PACKET opens ifname, HP_PORT_TAP takes over tap_fd (even on
 * failure). Returns the link index, or -1 with err set. */
int hp_dp_add_link(hp_dp *dp, int role, int group, int kind, const char *ifname, int tap_fd,
                   const uint8_t *mac, char *err, size_t errlen);
int hp_dp_add_own(hp_dp *dp, int link, int family, const uint8_t *addr);
int hp_dp_set_env(hp_dp *dp, int link, int family, const uint8_t *addr);
int hp_dp_set_subnet(hp_dp *dp, int link, int family, const uint8_t *net, int plen,
                     const uint8_t *router);
/* Stop owning addr on link (no more ARP/NDP answers for it); -1 if the link does not own it. */
int hp_dp_remove_own(hp_dp *dp, int link, int family, const uint8_t *addr);
/* Environment links only: move to another group; set the function state; allow IPv6. */
int hp_dp_set_link_group(hp_dp *dp, int link, int group);
int hp_dp_set_link_state(hp_dp *dp, int link, int state);
int hp_dp_set_link_ipv6(hp_dp *dp, int link, int allowed);
int hp_dp_set_group_options(hp_dp *dp, int group, int rst_unknown_tcp);
/* Move the data path's clock forward (never back): -1 for a smaller offset. */
int hp_dp_set_clock_offset(hp_dp *dp, double offset);
double hp_dp_clock(const hp_dp *dp); /* hp_dp_now() + the offset */
int hp_dp_watch(hp_dp *dp, int fd);
hp_link *hp_dp_link(hp_dp *dp, int link);
/* The inbound worker: a second thread, on cpus[0..n) (n = 0: any CPU), that receives on the
 * ENI links and does the VPC -> environment direction (REPLY translation, sends to the
 * environment and inside links), while hp_dp_poll's thread does the environment -> VPC one.
 * Why: on a veth a send runs the receiver's stack on the sender's CPU, so one thread put both
 * directions' receivers on one CPU; two threads put each direction's receiver where the
 * kernel's own NAT puts it. It runs only inside hp_dp_poll. -1 with err set when it could
 * not start or runs already. */
int hp_dp_start_inbound(hp_dp *dp, const int *cpus, int n, char *err, size_t errlen);
/* N workers (2 .. HP_DP_MAX_WORKERS), before any group or link is added: the caller's thread
 * is worker 0; worker i > 0 runs on cpus[i] (-1: any CPU) inside hp_dp_poll. Groups are then
 * added with hp_dp_add_group_shards, one engine per worker. -1 with err set. */
int hp_dp_start_workers(hp_dp *dp, int n, const int *cpus, char *err, size_t errlen);
int hp_dp_add_group_shards(hp_dp *dp, hp_engine *const *shards, int n);
/* Fault injection for tests: make worker w (1..N-1) fail at its next wait, as it would if its
 * epoll set broke. -1 when there is no such worker. */
int hp_dp_break_worker(hp_dp *dp, int w);

#define HP_POLL_INTR (-2)
#define HP_POLL_LINK_DOWN (1 << 30)
#define HP_POLL_WORKER_DOWN (1 << 29) /* a worker stopped (hp_worker.failed): stop the data path */
/* Move packets for up to timeout_ms. Returns a bit mask of watched fds that became readable
 * (bit i = i-th hp_dp_watch) plus HP_POLL_LINK_DOWN when a link's interface vanished, 0 when
 * the time ran out, HP_POLL_INTR when a signal came, -1 on error (errno). */
int hp_dp_poll(hp_dp *dp, int timeout_ms);
/* Run timers now: neighbour retransmits and expiry, engine expiry. */
void hp_dp_tick(hp_dp *dp, double now);
double hp_dp_now(void);

#endif
