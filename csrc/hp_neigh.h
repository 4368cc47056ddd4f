/* hp_neigh.h - the neighbour cache (ARP for IPv4, NDP for IPv6) of one link, and the frames
 * that ask and answer. No I/O: the data path (hp_neigh_io.c) sends what these functions build.
 *
 * The data path owns its addresses: the kernel of the node namespace holds none, so nothing
 * but this code answers "who has 198.18.1.4?" (RFC 826) or a Neighbor Solicitation for
 * 2001:2:0:1::4 (RFC 4861 section 7.2), and nothing but this code finds the MAC of the next hop.
 *
 * States follow RFC 4861 section 7.3.2 (and the kernel's NUD_* names), simplified:
 *   INCOMPLETE  a probe is out, packets wait in a small queue; up to HP_NEIGH_PROBES probes
 *               HP_NEIGH_RETRANS s apart, then the entry is dropped with its queue
 *   REACHABLE   confirmed by a reply within HP_NEIGH_REACHABLE s; used as is
 *   STALE       older than that, still used; the first packet sent through it starts a probe
 *   PROBE       a unicast probe is out while the cached MAC is still used; no answer after
 *               HP_NEIGH_PROBES probes removes the entry (the next packet resolves afresh)
 * Unused STALE entries are removed after HP_NEIGH_GC s.
 */
#ifndef HP_NEIGH_H
#define HP_NEIGH_H

#include <linux/virtio_net.h>
#include <stdint.h>

#define HP_NEIGH_SLOTS 1024      /* open addressing, power of two */
#define HP_NEIGH_MAX 512         /* entries per link (half the slots) */
/* bytes of frames waiting per unresolved neighbour: Linux's unres_qlen_bytes default,
 * 212,992 (about 147 full-size frames, thousands of small ones). A burst of new flows towards
 * a next hop not resolved yet must not lose its first packets: 8 did at the start of every
 * burst with 8 packets; with 101 packets (Linux's old unres_qlen) 99 of a 16,500-a-second
 * burst of small datagrams were lost while a new ENI's first next hop resolved (issue 16). */
#define HP_NEIGH_UNRES_BYTES 212992u
#define HP_NEIGH_QBYTES (4u << 20) /* all waiting packets of a link together */
#define HP_NEIGH_PROBES 3        /* RFC 4861 MAX_MULTICAST_SOLICIT / MAX_UNICAST_SOLICIT */
#define HP_NEIGH_RETRANS 1.0     /* RFC 4861 RETRANS_TIMER, seconds */
#define HP_NEIGH_REACHABLE 30.0  /* RFC 4861 REACHABLE_TIME, seconds */
#define HP_NEIGH_GC 60.0         /* unused STALE entries go after this */

enum hp_nud { HP_NUD_FREE = 0, HP_NUD_INCOMPLETE, HP_NUD_REACHABLE, HP_NUD_STALE, HP_NUD_PROBE };

/* A packet waiting for its next hop's MAC: a copy, with its virtio-net header. */
typedef struct hp_qpkt {
    struct hp_qpkt *next;
    struct virtio_net_hdr vh;
    uint32_t len;
    uint8_t frame[];
} hp_qpkt;

typedef struct {
    uint8_t addr[16];  /* IPv4 in the first 4 bytes */
    uint8_t family;    /* 4 or 6; 0 = free slot */
    uint8_t state;     /* enum hp_nud */
    uint8_t probes;    /* probes sent in this INCOMPLETE/PROBE round */
    uint8_t mac[6];
    double deadline;   /* INCOMPLETE/PROBE: next probe; REACHABLE: turns STALE; STALE: removal */
    hp_qpkt *qhead, *qtail;
    uint32_t qlen, qbytes; /* packets and frame bytes waiting */
} hp_neigh;

typedef struct {
    hp_neigh slot[HP_NEIGH_SLOTS];
    uint32_t n, qbytes;
} hp_neigh_table;

hp_neigh *hp_neigh_find(hp_neigh_table *t, int family, const uint8_t *addr);
/* Find or create (INCOMPLETE, no MAC). NULL when the table is full. */
hp_neigh *hp_neigh_get(hp_neigh_table *t, int family, const uint8_t *addr);
/* Remove an entry; its waiting packets are handed back through *queue (caller frees them). */
void hp_neigh_remove(hp_neigh_table *t, hp_neigh *n, hp_qpkt **queue);
/* Free a list of waiting packets (what hp_neigh_remove hands back). */
void hp_neigh_free_queue(hp_qpkt *q);
/* Queue a copy of a frame on n; the oldest waiting packet is dropped (returned) when full.
 * Returns 0 queued, 1 queued after dropping the oldest (*dropped: a list, through next, the
 * caller frees), -1 out of room/memory. */
int hp_neigh_enqueue(hp_neigh_table *t, hp_neigh *n, const struct virtio_net_hdr *vh,
                     const uint8_t *frame, uint32_t len, hp_qpkt **dropped);
/* Take the whole queue of n (to send now that the MAC is known). */
hp_qpkt *hp_neigh_take_queue(hp_neigh_table *t, hp_neigh *n);
/* A reply (or a request to us) said addr is at mac. */
void hp_neigh_confirm(hp_neigh *n, const uint8_t *mac, double now);

/* ---- frames. Each builder writes a whole Ethernet frame at out and returns its length. ---- */
uint32_t hp_arp_build(uint8_t *out, int op, const uint8_t *src_mac, const uint8_t *dst_mac,
                      const uint8_t *sha, const uint8_t *spa, const uint8_t *tha,
                      const uint8_t *tpa);
/* Neighbor Solicitation for target from src (our address); dst_mac NULL = solicited-node
 * multicast (resolution), else unicast (a PROBE of a cached entry). */
uint32_t hp_ndp_ns_build(uint8_t *out, const uint8_t *src_mac, const uint8_t *dst_mac,
                         const uint8_t *src_ip, const uint8_t *target);
/* Neighbor Advertisement of target (ours) at our_mac to dst_ip/dst_mac. */
uint32_t hp_ndp_na_build(uint8_t *out, const uint8_t *our_mac, const uint8_t *dst_mac,
                         const uint8_t *target, const uint8_t *dst_ip, int router,
                         int solicited);
/* ICMPv6 checksum over an IPv6 packet whose payload is ICMPv6 (no extension headers). */
uint16_t hp_icmp6_csum(const uint8_t *ip6, uint32_t icmp_len);

#define HP_ARP_FRAME_LEN 60   /* 42 bytes padded to the Ethernet minimum */
#define HP_NDP_FRAME_MAX 86

#endif
