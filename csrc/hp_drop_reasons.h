/* hp_drop_reasons.h - every drop reason, once, with its name.
 *
 * Two families: the engine's (HP_DROP_REASONS: enum hp_reason, counted per engine, the reason
 * byte of hp_translate) and the data path's own, for frames it refuses before or after the
 * engine (HP_DP_DROP_REASONS: enum hp_dp_reason, counted per data path). Each is an X-macro
 * (VPP declares its error counters the same way): X(NAME, "label") gives the enum constant
 * HP_R_NAME or HP_D_NAME, numbered in list order, and the label at that number in
 * hp_reason_names or hp_dp_reason_names, the name counters, events, JSON and the CLI show. The
 * label is the name in lower case. DropReason in hyperplane/engine/constants.py says more about each
 * of the engine's.
 *
 * The engine's numbers and labels are also hyperplane/engine/constants.py's DropReason, which the
 * reference engine uses: the compiled module (hyperplane/engine/_engine.pyx) refuses to import unless
 * the two agree number by number and name by name. The numbers travel (translate_batch's
 * reason bytes, events), so a new reason goes at the end of its list.
 */
#ifndef HP_DROP_REASONS_H
#define HP_DROP_REASONS_H

#define HP_DROP_REASONS(X)                                                                         \
    X(NONE, "none")                                 /* not dropped */                              \
    X(TRUNCATED, "truncated")                       /* shorter than its headers say */             \
    X(BAD_IP_VERSION, "bad_ip_version")             /* first nibble neither 4 nor 6 */             \
    X(BAD_IP_HEADER, "bad_ip_header")               /* IPv4 IHL < 5, total length < header */      \
    X(BAD_IP_CHECKSUM, "bad_ip_checksum")           /* IPv4 header checksum (RFC 1812 5.2.2) */    \
    X(FRAGMENT, "fragment")                         /* a later fragment; no first one passed */    \
    X(UNSUPPORTED_PROTOCOL, "unsupported_protocol") /* not TCP/UDP, or an outbound ICMP query */   \
    X(EXT_HEADER_CHAIN, "ext_header_chain")         /* IPv6 extension headers past our limit */    \
    X(BAD_L4_HEADER, "bad_l4_header")               /* TCP data offset < 5, bad UDP length */      \
    X(TTL_EXPIRED, "ttl_expired")                   /* IPv4 TTL <= 1 (RFC 1812 5.3.1) */           \
    X(HOP_LIMIT_EXPIRED, "hop_limit_expired")       /* IPv6 hop limit <= 1 */                      \
    X(UNSOLICITED, "unsolicited")                   /* inbound, matching no reply tuple */         \
    X(TCP_NOT_SYN, "tcp_not_syn")                   /* a new outbound TCP connection, no SYN */    \
    X(TCP_INVALID, "tcp_invalid")                   /* TCP flags its state does not allow */       \
    X(PORT_EXHAUSTED, "port_exhausted")             /* no free port on any ENI of the family */    \
    X(TABLE_FULL, "table_full")                     /* the connection table is at capacity */      \
    X(NO_ENI_ADDRESS, "no_eni_address")             /* no enabled ENI of the packet's family */    \
    X(TUPLE_COLLISION, "tuple_collision")           /* the tuple is another's, the other way */    \
    X(SECURITY_GROUP, "security_group")             /* no egress rule allows the new connection */ \
    X(BAD_ICMP, "bad_icmp")                         /* an ICMP error we cannot translate */        \
    X(ICMP_UNRELATED, "icmp_unrelated")             /* an environment's ICMP error, unrelated */   \
    X(SOURCE_LIMIT, "source_limit")                 /* its source holds max_per_src already */     \
    X(FRAGMENT_TABLE_FULL, "fragment_table_full")   /* a first fragment, HP_FRAG_MAX tracked */    \
    X(BAD_FRAGMENT, "bad_fragment")                 /* tiny, overlap at 8, bad length, too far */  \
    X(TCP_OUT_OF_WINDOW, "tcp_out_of_window")       /* seq/ack outside the tracked window */

#define HP_DP_DROP_REASONS(X)                                                                      \
    X(RUNT, "runt")                           /* shorter than an Ethernet header */                \
    X(NOT_OUR_MAC, "not_our_mac")             /* unicast to another MAC */                         \
    X(NOT_IP, "not_ip")                       /* an EtherType we do not route (VLAN tags, ...) */  \
    X(MULTICAST, "multicast")                 /* multicast that is not ARP/NDP (MLD, mDNS, ...) */ \
    X(SPOOFED_SOURCE, "spoofed_source")       /* from an environment, not from its address */      \
    X(LOCAL_DESTINATION, "local_destination") /* to the data path itself: it has no stack */       \
    X(ENGINE, "engine")                       /* the engine dropped it; its counter says why */    \
    X(NO_ENVIRONMENT, "no_environment")       /* a reply to an address no environment has */       \
    X(NO_ROUTE, "no_route")                   /* no address of that family on the way out */       \
    X(NEIGH_FAILED, "neigh_failed")           /* the next hop never answered ARP/NDP */            \
    X(NEIGH_QUEUE_FULL, "neigh_queue_full")   /* a full queue for one next hop (oldest dropped) */ \
    X(NEIGH_TABLE_FULL, "neigh_table_full")   /* no room for another neighbour */                  \
    X(BAD_NDP, "bad_ndp")                     /* NDP: hop limit != 255, bad checksum or length */  \
    X(RX_TRUNCATED, "rx_truncated")           /* the ring slot held less than the frame */         \
    X(FUNCTION_PENDING, "function_pending")   /* from an environment whose function is Pending */  \
    X(FUNCTION_INACTIVE, "function_inactive") /* from an environment whose function is Inactive */ \
    X(NO_VPC_CONFIG, "no_vpc_config")         /* from a function without VpcConfig */              \
    X(IPV6_NOT_ALLOWED, "ipv6_not_allowed")   /* IPv6 without Ipv6AllowedForDualStack */           \
    X(HANDOFF_FULL, "handoff_full")           /* workers: the owner's handoff ring was full */

#define HP_REASON_ENUM_(name, label) HP_R_##name,
enum hp_reason { HP_DROP_REASONS(HP_REASON_ENUM_) HP_R_COUNT };
#undef HP_REASON_ENUM_

#define HP_DP_REASON_ENUM_(name, label) HP_D_##name,
enum hp_dp_reason { HP_DP_DROP_REASONS(HP_DP_REASON_ENUM_) HP_D_COUNT };
#undef HP_DP_REASON_ENUM_

/* With data-path workers, what one shard refuses another may take: its slice of the ports is
 * full (port_exhausted), its share of the table (table_full) or of a source's connections
 * (source_limit) is used up, or the connection spilled to another shard earlier (a segment of
 * no connection here: tcp_not_syn). The data path hands such a packet to the next worker. */
static inline int hp_spills(int reason)
{
    return reason == HP_R_PORT_EXHAUSTED || reason == HP_R_TABLE_FULL ||
           reason == HP_R_SOURCE_LIMIT || reason == HP_R_TCP_NOT_SYN;
}

/* The labels by number: hp_reason_names[HP_R_TCP_NOT_SYN] is "tcp_not_syn". */
extern const char *const hp_reason_names[HP_R_COUNT];
extern const char *const hp_dp_reason_names[HP_D_COUNT];

#endif
