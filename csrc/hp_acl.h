/* hp_acl.h - security-group egress rules: the policy a new connection must pass.
 *
 * AWS security groups are stateful (EC2 User Guide, "Security group rules"): a rule is checked
 * once, when a connection is first seen, and every later packet of that connection, both ways,
 * follows the connection-tracking entry. For V2N traffic only egress rules matter: the
 * environment always opens the connection. A rule allows traffic to a destination prefix, for
 * a protocol and a destination port range; a connection is allowed when ANY rule allows it
 * (rules only allow, there is no deny), so an empty list allows nothing.
 */
#ifndef HP_ACL_H
#define HP_ACL_H

#include "hp_types.h"

/* AWS allows 60 egress rules per security group and 5 groups per ENI (300 rules); a rule with
 * an IPv4 and an IPv6 range is two rules here. 512 leaves room for both. */
#define HP_MAX_SG_RULES 512
#define HP_SG_PROTO_ALL 0 /* AWS's protocol "-1": every protocol, every port */

typedef struct {
    uint8_t net[16];            /* network address, IPv4 in the first 4 bytes */
    uint8_t plen;               /* prefix length */
    uint8_t family;             /* 4 or 6: a rule matches packets of its family only */
    uint8_t proto;              /* HP_IPPROTO_TCP/UDP, another number (never matches), or ALL */
    uint8_t pad;
    uint16_t port_min, port_max; /* destination ports (inclusive); ignored for ALL */
} hp_sg_rule;

typedef struct {
    uint8_t enforce; /* 0: no rules installed, everything is allowed (the default) */
    uint32_t n;
    hp_sg_rule rule[HP_MAX_SG_RULES];
} hp_sg;

/* Is address a (16 bytes, IPv4 in the first 4) inside net/plen? */
int hp_prefix_match(const uint8_t *a, const uint8_t *net, unsigned plen);

/* Does the security group allow a new connection with this orig tuple? */
int hp_sg_allows(const hp_sg *sg, const hp_tuple *t);

#endif
