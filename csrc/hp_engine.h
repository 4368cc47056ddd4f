/* hp_engine.h - the connection-tracking V2N source-NAT engine: bytes in, verdict out.
 *
 * No I/O, no Python. One engine is used by one thread at a time. The reference for every
 * behaviour is hyperplane/engine/reference/ (a module per part of this engine, named after
 * the C it mirrors); the functions below follow its structure.
 */
#ifndef HP_ENGINE_H
#define HP_ENGINE_H

#include "hp_acl.h"
#include "hp_parse.h"
#include "hp_ports.h"
#include "hp_types.h"

/* One direction of a TCP connection's sequence window (hp_tcp_window.c; the fields of the
 * kernel's ip_ct_tcp_state, explained in hyperplane/engine/reference/window.py). */
typedef struct {
    uint32_t end;    /* highest SEG.SEQ + SEG.LEN it has sent */
    uint32_t maxend; /* highest ACK + window the other side announced: its right edge */
    uint32_t maxwin; /* largest window it announced (scaled), at least 1 once seen */
    uint32_t maxack; /* highest ACK it sent (with HP_TCPF_MAXACK_SET) */
    uint8_t scale;   /* its window-scale shift (0 unless both SYNs had the option) */
    uint8_t flags;   /* HP_TCPF_* */
    uint8_t pad[2];  /* always zero */
} hp_tcp_win;

_Static_assert(sizeof(hp_tcp_win) == 20, "hp_tcp_win must be 20 bytes, no padding holes");

#define HP_TCPF_WSCALE 0x01     /* its SYN carried the window-scale option */
#define HP_TCPF_SACK_PERM 0x02  /* its SYN carried SACK-permitted */
#define HP_TCPF_MAXACK_SET 0x04 /* it has sent an ACK: maxack is meaningful */
#define HP_TCPF_RESYNC 0x08     /* restored: may be learned again from its next segment */
#define HP_TCPF_ALL 0x0F
#define HP_TCP_MAX_WSCALE 14 /* the largest window-scale shift (RFC 7323 2.3) */
#define HP_TCP_MAX_WINDOW (0xFFFFu << HP_TCP_MAX_WSCALE) /* the largest window: maxwin's cap */

/* One connection. Both tuples sit in one hash table as two nodes; a node id is
 * (entry index << 1 | direction), 0 ends a chain (entry 0 is never used). */
typedef struct {
    hp_tuple tuple[2];           /* [HP_DIR_ORIG], [HP_DIR_REPLY] */
    uint32_t hnext[2];           /* next node in each tuple's hash chain */
    uint32_t lru_prev, lru_next; /* neighbours in the list of this state's timeout class */
    double last_seen;
    uint64_t packets[2], bytes[2];
    uint64_t rep_bytes[2];       /* bytes already handed to flow logs (hp_engine_flow_collect) */
    uint32_t rep_packets[2];     /* packets already handed to flow logs */
    uint16_t eni_port;           /* also tuple[REPLY].dport */
    uint8_t eni_index;
    uint8_t state;               /* enum hp_state; 0 = slot free */
    uint8_t fl_tcp_flags[2];     /* TCP flags for flow logs since their last collection */
    uint32_t id;                 /* connections created before it + 1 (conntrack's id=) */
    hp_tcp_win win[2];           /* TCP: [HP_DIR_ORIG], [HP_DIR_REPLY] sequence windows */
} hp_entry;

/* What happened to a connection, as conntrack -E reports it (plus REJECT, for flow logs: an
 * unsolicited inbound packet, or a new connection refused by policy). Events go to a bounded
 * ring that the caller drains between polls; a full ring counts ev_lost and keeps the oldest. */
enum hp_event_type {
    HP_EV_NEW = 1,     /* a connection was created (counters zero) */
    HP_EV_UPDATE = 2,  /* its state changed (counters before the packet that changed it) */
    HP_EV_DESTROY = 3, /* expired or deleted; reason HP_GONE_* */
    HP_EV_REJECT = 4,  /* a packet refused: tuple[0] as it arrived, reason an hp_reason */
    HP_EV_FLOW = 5     /* from hp_engine_flow_collect: traffic since the last collection */
};
enum { HP_GONE_EXPIRED = 0, HP_GONE_DELETED = 1 };
#define HP_EV_NO_ENI 0xFF

typedef struct {
    hp_tuple tuple[2];                 /* [ORIG], [REPLY]; REJECT: [0] the packet, [1] zero */
    uint64_t packets[2], bytes[2];     /* totals; REJECT: the packet, in its direction */
    uint64_t dpackets[2], dbytes[2];   /* DESTROY/FLOW: not yet handed to flow logs */
    double time;
    uint32_t id;
    uint8_t type, state, eni_index, reason;
    uint8_t tcp_flags[2];              /* DESTROY/FLOW: fl_tcp_flags, as for the deltas */
} hp_event;

typedef struct {
    uint8_t has[2];      /* [0]: IPv4 address present, [1]: IPv6 */
    uint8_t disabled;    /* retired: takes no new connections, its existing ones go on */
    uint8_t addr[2][16]; /* IPv4 in the first 4 bytes */
    hp_pool *pools[2][2]; /* [is_ipv6][is_udp], built on first use */
    uint64_t packets[2], bytes[2]; /* translated through this ENI, per direction */
} hp_eni;

typedef struct {
    uint32_t capacity;
    uint16_t port_min, port_max;
    double reuse_delay;
    double timeouts[HP_N_CLASSES]; /* index = timeout class = state number */
    uint64_t seed;
    uint32_t max_per_src; /* connections one source address may hold; 0: no limit */
    /* This engine's slice of every ENI's ports: the p with (p >> HP_PORT_BLOCK_SHIFT) %
     * port_stride == port_slice (one data path worker's shard, issue 19), and of the
     * connection ids: (id - 1) % port_stride == port_slice, so a table's shards never share
     * an id. port_stride 0 or 1: everything. */
    uint16_t port_stride, port_slice;
} hp_config;

/* Connections per source address (an environment), for max_per_src: open addressing with
 * linear probing and backward-shift deletion; a slot exists while its count is above 0. */
typedef struct {
    uint8_t addr[16];
    uint32_t count;
    uint8_t family, used, pad[2];
} hp_src;
#define HP_MAX_SOURCES 65536 /* distinct sources with connections, when limited */

/* Fragmented datagrams whose first fragment passed (later fragments carry no ports: they are
 * translated by the datagram's tracker, as VPP's shallow virtual reassembly does, without
 * reassembling). Bounded like the kernel's defragmentation: HP_FRAG_MAX datagrams, each for
 * ipfrag_time / ip6frag_time at most. Open addressing, backward-shift deletion. */
#define HP_FRAG_MAX 1024
#define HP_FRAG_SLOTS 2048
#define HP_FRAG_TIMEOUT4 30.0
#define HP_FRAG_TIMEOUT6 60.0
typedef struct {
    hp_tuple key;      /* src, dst, family, proto (IPv4; 0 for IPv6), sport:dport = the 32-bit
                          identification, pad[0] = direction */
    uint32_t conn, conn_id; /* the connection (slot and id: the slot may be reused) */
    uint32_t next;     /* the fragments seen so far cover [0, next) without a gap */
    double expires;
    uint8_t used;
} hp_frag;

typedef struct {
    hp_config cfg;
    uint64_t k0, k1;  /* SipHash key, from the seed */
    hp_entry *entries; /* capacity + 1 slots; slot 0 unused */
    uint32_t *buckets;
    uint32_t mask;
    uint32_t n_entries, hw, free_head;
    uint32_t lru_head[HP_N_CLASSES], lru_tail[HP_N_CLASSES];
    hp_eni enis[HP_MAX_ENIS];
    unsigned n_enis;
    hp_sg sg;          /* security-group egress rules, checked for new connections only */
    hp_src *src;       /* per-source counts (NULL without max_per_src), src_mask + 1 slots */
    uint32_t src_mask, n_src;
    uint8_t exhausted; /* bit (is_ipv6 << 1 | is_udp): every pool of that kind is full */
    uint8_t signals[HP_MAX_SIGNALS];
    unsigned n_signals;
    double last_now;
    hp_event *ev;      /* event ring (NULL: events off), ev_mask + 1 slots */
    uint32_t ev_mask, ev_head, ev_tail;
    uint64_t ev_lost;
    uint32_t ev_kinds;        /* bit (1 << HP_EV_*) for each kind recorded; others are skipped */
    uint32_t ev_reject_limit; /* REJECT events kept between two drains (0: no limit) */
    uint32_t ev_rejects;      /* REJECT events kept since the last drain */
    /* counters */
    uint64_t packets[2], bytes[2], created, expired;
    uint64_t icmp_errors; /* ICMP errors translated (both directions); not in packets[] */
    uint64_t restored;    /* connections put back by hp_engine_restore */
    uint64_t fragments;   /* fragments translated (first and later), in packets[] too */
    hp_frag *frag;        /* HP_FRAG_SLOTS, allocated with the first fragment */
    uint32_t n_frag;
    uint32_t last_id;     /* the highest connection id handed out or restored */
    uint64_t drops[HP_R_COUNT];
} hp_engine;

hp_engine *hp_engine_new(const hp_config *cfg);
void hp_engine_free(hp_engine *e);
int hp_engine_add_eni(hp_engine *e, const uint8_t *addr4, const uint8_t *addr6);
size_t hp_engine_memory(const hp_engine *e);
/* Replace the egress rules (n <= HP_MAX_SG_RULES); enforce 0 = allow everything. */
int hp_engine_set_sg(hp_engine *e, const hp_sg_rule *rules, uint32_t n, int enforce);
/* Let ENI i take new connections (enabled) or not; existing connections are not touched. */
int hp_engine_set_eni_enabled(hp_engine *e, unsigned i, int enabled);

/* Events: capacity 0 turns them off; otherwise the ring holds capacity (rounded up to a power
 * of two) events. -1 when out of memory. Take copies up to max of the oldest into out. */
int hp_engine_events(hp_engine *e, uint32_t capacity);
uint32_t hp_engine_take_events(hp_engine *e, hp_event *out, uint32_t max);
/* Empty the ring without copying (nobody listens); returns how many were dropped. */
uint32_t hp_engine_discard_events(hp_engine *e);
/* Which kinds to record (bits 1 << HP_EV_NEW ... 1 << HP_EV_REJECT; the rest are skipped, not
 * lost), and how many REJECT events to keep between two drains (0: no limit). Past the limit a
 * REJECT counts in ev_lost: a scan must not turn into work per packet for whoever drains. */
void hp_engine_event_options(hp_engine *e, uint32_t kinds, uint32_t reject_limit);
/* Flow-log deltas: for each connection with traffic not yet collected, one HP_EV_FLOW record
 * (dpackets/dbytes), marking it collected. Walks slots from *cursor; returns the number written
 * (at most max) and sets *cursor to 0 once the table was walked to the end. */
uint32_t hp_engine_flow_collect(hp_engine *e, hp_event *out, uint32_t max, uint32_t *cursor,
                                double now);
/* Delete the connection whose orig tuple is *orig (DESTROY event, reason deleted): 0, or -1
 * when there is none. hp_engine_flush deletes every connection and returns how many. */
int hp_engine_delete(hp_engine *e, const hp_tuple *orig, double now);
uint32_t hp_engine_flush(hp_engine *e, double now);

/* ---- snapshot and restore (a restart without losing connections) --------------------------
 *
 * One connection as hp_engine_snapshot writes it and hp_engine_restore reads it: 192 bytes,
 * no padding, host byte order (the file is for the same machine's next data path). The reply
 * tuple is redundant (reply.dst is ENI eni_index's address, reply.dport eni_port): it lets
 * restore refuse a record whose ENI is not the one it was made on. Version 2 of the snapshot
 * (hyperplane/engine/types.py SNAPSHOT_VERSION) added the TCP windows. */
typedef struct {
    hp_tuple orig, reply;
    double last_seen;                /* engine time of the last packet */
    uint64_t packets[2], bytes[2];   /* per direction */
    uint64_t rep_bytes[2];           /* already handed to flow logs */
    uint32_t rep_packets[2];
    uint32_t id;
    uint16_t eni_port;
    uint8_t eni_index, state;
    hp_tcp_win win[2];               /* TCP windows (zero for UDP) */
} hp_saved;

_Static_assert(sizeof(hp_saved) == 192, "hp_saved must be 192 bytes, no padding");

/* Why a record was not restored (hp_engine_restore's result; 0 = restored). Checked in this
 * order, the same in hyperplane/engine/reference/snapshot.py. */
enum {
    HP_RESTORED = 0,
    HP_RS_INVALID = 1,      /* not a connection this engine could have made (family, proto,
                               state, ports, tuples that do not fit together, bad time) */
    HP_RS_ENI_MISMATCH = 2, /* no ENI eni_index here, or it has another address */
    HP_RS_EXPIRED = 3,      /* its timeout passed before it could be restored */
    HP_RS_DUPLICATE = 4,    /* a tuple or the port is already taken in this table */
    HP_RS_TABLE_FULL = 5,   /* no room */
    HP_RS_OTHER_SLICE = 6,  /* its port is another shard's (checked right after INVALID) */
    HP_RS_COUNT = 7
};

/* Copy up to max connections into out, each timeout class oldest first (the order restore
 * keeps); returns how many. n_entries of them exist. */
uint32_t hp_engine_snapshot(const hp_engine *e, hp_saved *out, uint32_t max);
/* Put a saved connection back with its ENI, port, state, timer (last_seen + shift, at most
 * now), counters and id; no event. Returns HP_RESTORED or the HP_RS_* reason. */
int hp_engine_restore(hp_engine *e, const hp_saved *s, double now, double shift);

/* Take the time (never backwards), expire what is due; returns the time used. */
double hp_engine_advance(hp_engine *e, double now);

/* Translate one packet in place. Returns an hp_verdict; *reason gets the drop reason. */
int hp_translate(hp_engine *e, int dir, uint8_t *pkt, uint32_t len, uint32_t flags, double now,
                 uint8_t *reason);

/* Translate n packets of one direction in place (offsets/lengths into buf). */
uint32_t hp_translate_batch(hp_engine *e, int dir, uint8_t *buf, const uint32_t *offsets,
                            const uint32_t *lengths, const uint8_t *flags, uint32_t n,
                            double now, uint8_t *verdicts, uint8_t *reasons);

#endif
