/* hp_acl.c - security-group egress rule matching (see hp_acl.h). Runs once per new
 * connection, never per packet of an existing one: a linear walk is enough. hp_prefix_match
 * also picks each forwarded packet's next hop (next_hop in hp_dp_internal.h). */
#include "hp_acl.h"

#include <string.h>

int hp_prefix_match(const uint8_t *a, const uint8_t *net, unsigned plen)
{
    unsigned full = plen / 8, rest = plen % 8;
    for (unsigned i = 0; i < full; i++)   /* per packet (next hop): no call to memcmp */
        if (a[i] != net[i])
            return 0;
    if (!rest)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (net[full] & mask);
}

int hp_sg_allows(const hp_sg *sg, const hp_tuple *t)
{
    if (!sg->enforce)
        return 1;
    for (uint32_t i = 0; i < sg->n; i++) {
        const hp_sg_rule *r = &sg->rule[i];
        if (r->family != t->family || !hp_prefix_match(t->dst, r->net, r->plen))
            continue;
        if (r->proto == HP_SG_PROTO_ALL)
            return 1;
        if (r->proto == t->proto && t->dport >= r->port_min && t->dport <= r->port_max)
            return 1;
    }
    return 0;
}
