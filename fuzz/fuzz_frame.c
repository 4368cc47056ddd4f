/* fuzz_frame.c - libFuzzer target: the data path's frame input (hp_rx_frame in
 * csrc/hp_dp_poll.c): Ethernet, ARP and NDP for the addresses it owns, anti-spoofing, the TCP
 * reset for segments of no connection, the engine, and the neighbour queue a translated packet
 * waits in.
 *
 * No sockets and no namespace: hp_rx_frame and hp_flush_all are declared in
 * csrc/hp_dp_internal.h and called here directly, and each link's transmit side writes into
 * /dev/null (what was sent is not looked at; that
 * the data path builds and queues it without a memory error is). The rig matches
 * tests/kit/rig.py: an environment link (gateway 198.19.0.1 / 2001:2:0:f000::1,
 * environment .2 / ::2) and an ENI link (198.18.1.4 / 2001:2:0:1::4 in 198.18.1.0/24 and
 * 2001:2:0:1::/64, routers .1 / ::1), one engine, RSTs for unknown TCP on.
 *
 * Input: a sequence of ops; each starts with a byte c:
 *   c % 4 != 3  a frame: len_hi, len_lo, then len bytes (fewer if the input ends), received
 *               on the ENI link when bit 2 of c is set, else on the environment link, with
 *               virtio NEEDS_CSUM when bit 3 is set; bits 4-7: time step in 1/8 s.
 *   c % 4 == 3  a tick: 1 byte, seconds to move on (neighbour timers, probes, expiry).
 */
#define _GNU_SOURCE /* struct mmsghdr, as the data path's files are compiled */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "hp_dp_internal.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond))                                                                       \
            __builtin_trap();                                                              \
    } while (0)

static const uint8_t GW_MAC[6] = {0x02, 0x68, 0x70, 0, 0, 0x01};
static const uint8_t ENI_MAC_[6] = {0x02, 0x68, 0x70, 0, 0, 0xe0};

static int add_fake_link(hp_dp *dp, int role, int group, const uint8_t *mac)
{
    hp_link *l = calloc(1, sizeof *l);
    CHECK(l);
    l->port.kind = HP_PORT_TAP; /* sends are writev()s of virtio header + frame */
    l->port.fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    CHECK(l->port.fd >= 0);
    l->role = role;
    l->group = group;
    l->index = (int)dp->n_links;
    for (unsigned w = 0; w < HP_DP_MAX_WORKERS; w++)
        l->pt[w] = &l->port; /* one thread: the loop's port */
    memcpy(l->mac, mac, 6);
    if (role == HP_ROLE_ENI)
        dp->groups[group].eni_link = (int)dp->n_links;
    dp->links[dp->n_links] = l;
    return (int)dp->n_links++;
}

static void v6(uint8_t *a, uint16_t w3, uint16_t last)
{
    static const uint8_t base[16] = {0x20, 0x01, 0, 2};
    memcpy(a, base, 16);
    a[6] = (uint8_t)(w3 >> 8);
    a[7] = (uint8_t)w3;
    a[14] = (uint8_t)(last >> 8);
    a[15] = (uint8_t)last;
}

static void check_link(const hp_link *l)
{
    CHECK(l->neigh.n <= HP_NEIGH_MAX);
    CHECK(l->neigh.qbytes <= HP_NEIGH_QBYTES);
    CHECK(l->port.ntx == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hp_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.capacity = 64;
    cfg.port_min = 40000;
    cfg.port_max = 40015;
    cfg.reuse_delay = 2.0;
    cfg.seed = 7;
    for (int i = 1; i < HP_N_CLASSES; i++)
        cfg.timeouts[i] = 30.0;
    hp_engine *e = hp_engine_new(&cfg);
    CHECK(e);
    uint8_t eni4[4] = {198, 18, 1, 4}, eni6[16], net4[4] = {198, 18, 1, 0}, r4[4] = {198, 18, 1, 1};
    uint8_t net6[16], r6[16], gw4[4] = {198, 19, 0, 1}, env4[4] = {198, 19, 0, 2}, gw6[16], env6[16];
    v6(eni6, 1, 4);
    v6(net6, 1, 0);
    v6(r6, 1, 1);
    v6(gw6, 0xf000, 1);
    v6(env6, 0xf000, 2);
    CHECK(hp_engine_add_eni(e, eni4, eni6) == 0);

    hp_dp *dp = hp_dp_new();
    CHECK(dp);
    int g = hp_dp_add_group(dp, e);
    CHECK(g == 0 && hp_dp_set_group_options(dp, g, 1) == 0);
    int eni = add_fake_link(dp, HP_ROLE_ENI, g, ENI_MAC_);
    int env = add_fake_link(dp, HP_ROLE_ENV, g, GW_MAC);
    CHECK(hp_dp_add_own(dp, eni, 4, eni4) == 0 && hp_dp_add_own(dp, eni, 6, eni6) == 0);
    CHECK(hp_dp_set_subnet(dp, eni, 4, net4, 24, r4) == 0);
    CHECK(hp_dp_set_subnet(dp, eni, 6, net6, 64, r6) == 0);
    CHECK(hp_dp_add_own(dp, env, 4, gw4) == 0 && hp_dp_add_own(dp, env, 6, gw6) == 0);
    CHECK(hp_dp_set_env(dp, env, 4, env4) == 0 && hp_dp_set_env(dp, env, 6, env6) == 0);

    double now = 1.0;
    const uint8_t *p = data, *end = data + size;
    while (p < end) {
        uint8_t c = *p++;
        if (c % 4 == 3) {
            now += p < end ? *p++ : 0;
            hp_dp_tick(dp, now);
        } else {
            if (end - p < 2)
                break;
            uint32_t len = (uint32_t)p[0] << 8 | p[1];
            p += 2;
            if (len > (uint32_t)(end - p))
                len = (uint32_t)(end - p);
            uint8_t *f = malloc(len ? len : 1); /* exact size: a read past it is reported */
            CHECK(f);
            memcpy(f, p, len);
            p += len;
            now += (c >> 4) * 0.125;
            struct virtio_net_hdr vh;
            memset(&vh, 0, sizeof vh);
            if (c & 8)
                vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            hp_link *l = dp->links[c & 4 ? eni : env];
            hp_engine_advance(e, now);
            hp_rx_frame(dp, 0, l, &vh, f, len, now);
            hp_flush_all(dp, 0); /* queued sends point into f: out before it is freed */
            free(f);
        }
        CHECK(e->n_entries <= e->cfg.capacity);
        for (unsigned i = 0; i < dp->n_links; i++)
            check_link(dp->links[i]);
    }
    hp_dp_free(dp);
    hp_engine_free(e);
    return 0;
}
