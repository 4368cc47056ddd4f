/* hp_dp_inbound.c - forwarding from the VPC: engine REPLY, then to the environment or the
 * inside link (VPP's out2in). With the inbound worker this runs in its thread; with workers, in
 * the one owning the destination port.
 */
#define _GNU_SOURCE
#include "hp_dp_internal.h"

/* From the VPC to the ENI: engine REPLY, then to the environment that owns the destination
 * address, or to the group's inside link (a NAT gateway's private side). */
void hp_inbound(hp_dp *dp, int w, hp_link *l, const struct virtio_net_hdr *vh, uint8_t *f,
                uint32_t len, int family, double now)
{
    uint8_t *ip = f + 14, reason;
    uint32_t flags = (vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) ? HP_FLAG_CSUM_PARTIAL : 0;
    hp_group *g = &dp->groups[l->group];
    hp_link *inside = hp_dp_link(dp, g->inside_link);
    if (inside && !(family == 4 ? inside->has_net4 : inside->has_net6)) {
        COUNT_DROP(dp, HP_D_NO_ROUTE);
        return;
    }
    lock_engine(dp, g);
    int verdict = hp_translate(g->shard[w], HP_DIR_REPLY, ip, len - 14, flags, now, &reason);
    unlock_engine(dp, g);
    if (verdict != HP_REPLY) {
        COUNT_DROP(dp, HP_D_ENGINE); /* unsolicited and the rest: the engine counted the reason */
        return;
    }
    const uint8_t *dst = family == 4 ? ip + 16 : ip + 24;
    if (inside) {
        dp->wk[w].forwarded[1]++;
        hp_transmit(dp, w, inside, family, next_hop(inside, family, dst), vh, f, len, now);
        return;
    }
    int li = env_lookup(dp, family, dst);
    if (li < 0) {
        COUNT_DROP(dp, HP_D_NO_ENVIRONMENT);
        return;
    }
    dp->wk[w].forwarded[1]++;
    hp_transmit(dp, w, dp->links[li], family, dst, vh, f, len, now);
}
