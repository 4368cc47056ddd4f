# Declarations of the C core (csrc/) used by _engine.pyx.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "hp_drop_reasons.h":
    enum:
        HP_R_COUNT
        HP_D_COUNT
    const char *hp_reason_names[]
    const char *hp_dp_reason_names[]

cdef extern from "hp_types.h":
    enum:
        HP_N_CLASSES
        HP_MAX_ENIS
        HP_DROP
    ctypedef struct hp_tuple:
        uint8_t src[16]
        uint8_t dst[16]
        uint16_t sport
        uint16_t dport
        uint8_t family
        uint8_t proto

cdef extern from "hp_ports.h":
    ctypedef struct hp_pool:
        uint32_t n
        uint32_t n_free

    uint32_t hp_slice_ports(uint16_t port_min, uint16_t port_max, uint16_t stride, uint16_t slice,
                            uint16_t *first)

cdef extern from "hp_tcp.h":
    enum:
        HP_TCP_N_FLAGCLASSES
        HP_TCP_N_STATES
    const signed char hp_tcp_transitions[2][HP_TCP_N_FLAGCLASSES][HP_TCP_N_STATES]
    int hp_tcp_flag_class(uint8_t flags)

cdef extern from "hp_acl.h":
    enum:
        HP_MAX_SG_RULES
    ctypedef struct hp_sg_rule:
        uint8_t net[16]
        uint8_t plen
        uint8_t family
        uint8_t proto
        uint16_t port_min
        uint16_t port_max

cdef extern from "hp_engine.h":
    ctypedef struct hp_entry:
        hp_tuple tuple[2]
        uint32_t lru_next
        double last_seen
        uint64_t packets[2]
        uint64_t bytes[2]
        uint16_t eni_port
        uint8_t eni_index
        uint8_t state
        uint32_t id

    enum:
        HP_EV_NEW
        HP_EV_UPDATE
        HP_EV_DESTROY
        HP_EV_REJECT
        HP_EV_FLOW
        HP_EV_NO_ENI

    ctypedef struct hp_event:
        hp_tuple tuple[2]
        uint64_t packets[2]
        uint64_t bytes[2]
        uint64_t dpackets[2]
        uint64_t dbytes[2]
        double time
        uint32_t id
        uint8_t type
        uint8_t state
        uint8_t eni_index
        uint8_t reason
        uint8_t tcp_flags[2]

    ctypedef struct hp_saved:
        hp_tuple orig
        hp_tuple reply
        double last_seen

    enum:
        HP_RESTORED
        HP_RS_COUNT

    ctypedef struct hp_eni:
        uint8_t has[2]
        uint8_t disabled
        hp_pool *pools[2][2]
        uint64_t packets[2]
        uint64_t bytes[2]

    ctypedef struct hp_config:
        uint32_t capacity
        uint16_t port_min
        uint16_t port_max
        double reuse_delay
        double timeouts[11]
        uint64_t seed
        uint32_t max_per_src
        uint16_t port_stride
        uint16_t port_slice

    ctypedef struct hp_engine:
        hp_config cfg
        hp_entry *entries
        uint32_t n_entries
        uint32_t hw
        uint32_t lru_head[11]
        hp_eni enis[256]
        unsigned n_enis
        uint8_t signals[64]
        unsigned n_signals
        uint64_t packets[2]
        uint64_t bytes[2]
        uint64_t created
        uint64_t expired
        uint64_t icmp_errors
        uint64_t restored
        uint64_t fragments
        uint64_t drops[24]
        hp_event *ev
        uint32_t ev_mask
        uint32_t ev_head
        uint32_t ev_tail
        uint32_t ev_kinds
        uint32_t ev_reject_limit
        uint64_t ev_lost

    hp_engine *hp_engine_new(const hp_config *cfg) nogil
    void hp_engine_free(hp_engine *e) nogil
    int hp_engine_add_eni(hp_engine *e, const uint8_t *addr4, const uint8_t *addr6) nogil
    size_t hp_engine_memory(const hp_engine *e) nogil
    int hp_engine_set_sg(hp_engine *e, const hp_sg_rule *rules, uint32_t n, int enforce) nogil
    int hp_engine_set_eni_enabled(hp_engine *e, unsigned i, int enabled) nogil
    double hp_engine_advance(hp_engine *e, double now) nogil
    int hp_engine_events(hp_engine *e, uint32_t capacity) nogil
    uint32_t hp_engine_take_events(hp_engine *e, hp_event *out, uint32_t max) nogil
    uint32_t hp_engine_discard_events(hp_engine *e) nogil
    void hp_engine_event_options(hp_engine *e, uint32_t kinds, uint32_t reject_limit) nogil
    uint32_t hp_engine_flow_collect(hp_engine *e, hp_event *out, uint32_t max,
                                    uint32_t *cursor, double now) nogil
    int hp_engine_delete(hp_engine *e, const hp_tuple *orig, double now) nogil
    uint32_t hp_engine_flush(hp_engine *e, double now) nogil
    uint32_t hp_engine_snapshot(const hp_engine *e, hp_saved *out, uint32_t max) nogil
    int hp_engine_restore(hp_engine *e, const hp_saved *s, double now, double shift) nogil
    int hp_translate(hp_engine *e, int dir, uint8_t *pkt, uint32_t len, uint32_t flags,
                     double now, uint8_t *reason) nogil
    uint32_t hp_translate_batch(hp_engine *e, int dir, uint8_t *buf, const uint32_t *offsets,
                                const uint32_t *lengths, const uint8_t *flags, uint32_t n,
                                double now, uint8_t *verdicts, uint8_t *reasons) nogil

cdef extern from "hp_dp.h":
    enum:
        HP_ROLE_ENV
        HP_ROLE_ENI
        HP_ROLE_INSIDE
        HP_LINK_N_STATES
        HP_PORT_PACKET
        HP_PORT_TAP
        HP_POLL_INTR
        HP_POLL_LINK_DOWN
        HP_POLL_WORKER_DOWN
        HP_DP_MAX_WORKERS
        HP_MT_NONE
        HP_MT_INBOUND
        HP_MT_WORKERS
        HP_NEIGH_SLOTS
        HP_RING_FRAMES_MIN
        HP_RING_FRAMES_MAX
        HP_RING_FRAMES_DEFAULT
        HP_RING_FPB
    ctypedef struct hp_port:
        int kind
        int fd
        uint32_t ring_frames
        uint64_t tx_packets
        uint64_t tx_bytes
        uint64_t tx_errors
        uint64_t rx_ring_drops
        uint64_t rx_packets
        uint64_t rx_bytes
        int tap_io
    void hp_io_ring_stats(hp_port *p) nogil
    const char *hp_io_tap_fallback_reason()
    enum:
        HP_TAP_IO_RW
        HP_TAP_IO_URING
    ctypedef struct hp_neigh:
        uint8_t addr[16]
        uint8_t family
        uint8_t state
        uint8_t mac[6]
        double deadline
        uint32_t qlen
    ctypedef struct hp_neigh_table:
        hp_neigh slot[1024]
        uint32_t n
    ctypedef struct hp_link:
        int role
        int group
        hp_port port
        hp_port *pt[16]
        uint8_t mac[6]
        hp_neigh_table neigh
        uint8_t down
        uint64_t arp_in
        uint64_t arp_out
        uint64_t nd_in
        uint64_t nd_out
        uint8_t state
        uint8_t no_ipv6
        uint64_t blocked
    ctypedef struct hp_group:
        int eni_link
        int inside_link
        uint8_t rst_unknown_tcp
    ctypedef struct hp_worker:
        uint32_t failed
        int fail_errno
        uint64_t rx_packets
        uint64_t forwarded[2]
        uint64_t handoff_out
        uint64_t handoff_in
        uint64_t handoff_full
        uint64_t spilled
    ctypedef struct hp_dp:
        uint32_t ring_frames
        unsigned n_links
        unsigned n_groups
        hp_group groups[64]
        uint64_t drops[19]
        int mt
        unsigned n_threads
        hp_worker wk[16]
        uint64_t rst_sent
        uint64_t rst_withheld_fragment
        double clock_offset
    hp_dp *hp_dp_new() nogil
    void hp_dp_free(hp_dp *dp) nogil
    int hp_dp_add_group(hp_dp *dp, hp_engine *e) nogil
    int hp_dp_add_group_shards(hp_dp *dp, hp_engine *const *shards, int n) nogil
    int hp_dp_start_workers(hp_dp *dp, int n, const int *cpus, char *err, size_t errlen) nogil
    int hp_dp_break_worker(hp_dp *dp, int w) nogil
    int hp_dp_add_link(hp_dp *dp, int role, int group, int kind, const char *ifname, int tap_fd,
                       const uint8_t *mac, char *err, size_t errlen) nogil
    int hp_dp_add_own(hp_dp *dp, int link, int family, const uint8_t *addr) nogil
    int hp_dp_set_env(hp_dp *dp, int link, int family, const uint8_t *addr) nogil
    int hp_dp_set_subnet(hp_dp *dp, int link, int family, const uint8_t *net, int plen,
                         const uint8_t *router) nogil
    int hp_dp_remove_own(hp_dp *dp, int link, int family, const uint8_t *addr) nogil
    int hp_dp_set_link_group(hp_dp *dp, int link, int group) nogil
    int hp_dp_set_link_state(hp_dp *dp, int link, int state) nogil
    int hp_dp_set_link_ipv6(hp_dp *dp, int link, int allowed) nogil
    int hp_dp_set_group_options(hp_dp *dp, int group, int rst_unknown_tcp) nogil
    int hp_dp_set_clock_offset(hp_dp *dp, double offset) nogil
    double hp_dp_clock(const hp_dp *dp) nogil
    int hp_dp_watch(hp_dp *dp, int fd) nogil
    hp_link *hp_dp_link(hp_dp *dp, int link) nogil
    int hp_dp_start_inbound(hp_dp *dp, const int *cpus, int n, char *err, size_t errlen) nogil
    int hp_dp_poll(hp_dp *dp, int timeout_ms) nogil
    void hp_dp_tick(hp_dp *dp, double now) nogil
    double hp_dp_now() nogil
