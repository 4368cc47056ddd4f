/* hp_dp_outbound.c - forwarding from an environment (or a NAT gateway's inside link) into
 * the VPC: checks of the sender, engine ORIG, out of the group's ENI link (VPP's in2out).
 */
#define _GNU_SOURCE
#include "hp_dp_internal.h"

static const int STATE_DROP[HP_LINK_N_STATES] = {
    [HP_LINK_PENDING] = HP_D_FUNCTION_PENDING,
    [HP_LINK_INACTIVE] = HP_D_FUNCTION_INACTIVE,
    [HP_LINK_DETACHED] = HP_D_NO_VPC_CONFIG,
};

/* From an environment (or a NAT gateway's inside link) into the VPC: engine ORIG, then out of
 * the group's ENI link. */
void hp_outbound(hp_dp *dp, int w, hp_link *l, const struct virtio_net_hdr *vh, uint8_t *f,
                 uint32_t len, int family, double now, int hops)
{
    uint8_t *ip = f + 14;
    uint32_t n = len - 14;
    hp_group *g = &dp->groups[l->group];
    hp_link *out = hp_dp_link(dp, g->eni_link);
    if (l->role == HP_ROLE_ENV) {
        /* Lambda: a function that is not Active cannot send (the invocation fails); ARP and
         * NDP were answered before this, so the environment's neighbour cache stays sane. */
        if (l->state != HP_LINK_ACTIVE) {
            __atomic_fetch_add(&l->blocked, 1, __ATOMIC_RELAXED);
            COUNT_DROP(dp, STATE_DROP[l->state]);
            return;
        }
        /* Lambda: IPv6 outbound only with Ipv6AllowedForDualStack */
        if (family == 6 && l->no_ipv6) {
            COUNT_DROP(dp, HP_D_IPV6_NOT_ALLOWED);
            return;
        }
    }
    /* An environment sends from its own address and nothing else (anti-spoofing); an inside
     * link carries many subnets' traffic, so any source. Packets too short to hold the
     * addresses go on to the engine, which names what is wrong with them. */
    if (n >= (family == 4 ? 20u : 40u)) {
        const uint8_t *src = ip + (family == 4 ? 12 : 8), *dst = ip + (family == 4 ? 16 : 24);
        if (l->role == HP_ROLE_ENV &&
            (family == 4 ? !l->has_env4 || !hp_eq4(src, l->env4)
                         : !l->has_env6 || !hp_eq16(src, l->env6))) {
            COUNT_DROP(dp, HP_D_SPOOFED_SOURCE);
            return;
        }
        /* the data path has no local stack: nothing is addressed to it (a NAT gateway's
         * public address included) */
        if (is_own(l, family, dst) ||
            (l->role == HP_ROLE_INSIDE && out && is_own(out, family, dst))) {
            COUNT_DROP(dp, HP_D_LOCAL_DESTINATION);
            return;
        }
    }
    if (!out || !(family == 4 ? out->has_net4 : out->has_net6)) {
        COUNT_DROP(dp, HP_D_NO_ROUTE);
        return;
    }
    uint8_t reason;
    uint32_t flags = (vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) ? HP_FLAG_CSUM_PARTIAL : 0;
    /* With workers, a new connection this shard refuses for its share (hp_spills: ports, table,
     * per-source limit) spills over to the next worker, so exhaustion and the limits are
     * decided over all shards; and a segment of no connection here may belong to one that
     * spilled. The engine is asked not to count those drops (HP_FLAG_SPILL) until the last
     * worker has had the packet. */
    int spill = dp->mt == HP_MT_WORKERS && hops < (int)dp->n_threads - 1;
    lock_engine(dp, g);
    int verdict = hp_translate(g->shard[w], HP_DIR_ORIG, ip, n, flags | (spill ? HP_FLAG_SPILL : 0),
                               now, &reason);
    unlock_engine(dp, g);
    if (verdict == HP_DROP) {
        if (spill && hp_spills(reason)) {
            dp->wk[w].spilled++;
            hp_handoff(dp, w, (w + 1) % (int)dp->n_threads, l, vh, f, len, hops + 1);
            return;
        }
        COUNT_DROP(dp, HP_D_ENGINE);
        if (reason == HP_R_TCP_NOT_SYN && g->rst_unknown_tcp)
            hp_send_rst(dp, w, l, f, ip, n, flags);
        return;
    }
    dp->wk[w].forwarded[0]++;
    hp_transmit(dp, w, out, family, next_hop(out, family, family == 4 ? ip + 16 : ip + 24), vh, f,
             len, now);
}
