/* hp_io.c - AF_PACKET (TPACKET_V2 ring) and TAP packet I/O; see hp_io.h. */
#define _GNU_SOURCE
#include "hp_io.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif
/* A fanout group's own hook replaces its members' (their PACKET_IGNORE_OUTGOING no longer
 * applies): without this flag every member would receive what any member sends. */
#ifndef PACKET_FANOUT_FLAG_IGNORE_OUTGOING
#define PACKET_FANOUT_FLAG_IGNORE_OUTGOING 0x4000
#endif

static int fail(char *err, size_t errlen, const char *what, const char *ifname)
{
    snprintf(err, errlen, "%s on %s: %s", what, ifname, strerror(errno));
    return -1;
}

static void port_init(hp_port *p, int kind)
{
    memset(p, 0, sizeof(*p));
    p->kind = kind;
    p->fd = -1;
}

int hp_io_open_packet(hp_port *p, const char *ifname, uint32_t ring_frames, char *err,
                      size_t errlen)
{
    port_init(p, HP_PORT_PACKET);
    if (!ring_frames)
        ring_frames = HP_RING_FRAMES_DEFAULT;
    if (ring_frames < HP_RING_FRAMES_MIN || ring_frames > HP_RING_FRAMES_MAX ||
        ring_frames % HP_RING_FPB) {
        snprintf(err, errlen, "ring of %u frames on %s: use a multiple of %u from %u to %u",
                 ring_frames, ifname, HP_RING_FPB, HP_RING_FRAMES_MIN, HP_RING_FRAMES_MAX);
        return -1;
    }
    p->ring_frames = ring_frames;
    unsigned idx = if_nametoindex(ifname);
    if (!idx)
        return fail(err, errlen, "no such interface", ifname);
    p->ifindex = (int)idx;
    /* Protocol 0: receive nothing until bind() names the interface and ETH_P_ALL. */
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(err, errlen, "socket(AF_PACKET)", ifname);
    p->fd = fd;
    int v = TPACKET_V2;
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0)
        return fail(err, errlen, "PACKET_VERSION TPACKET_V2", ifname);
    /* Before the ring exists: the kernel refuses PACKET_VNET_HDR once a ring is mapped. */
    v = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &v, sizeof v) < 0)
        return fail(err, errlen, "PACKET_VNET_HDR", ifname);
    /* Packets too big for a ring frame are queued whole on the socket (see hp_io.h). */
    if (setsockopt(fd, SOL_PACKET, PACKET_COPY_THRESH, &v, sizeof v) < 0)
        return fail(err, errlen, "PACKET_COPY_THRESH", ifname);
    int rb = HP_RCVBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rb, sizeof rb) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
    p->big = malloc((size_t)HP_BIG_SLOT * HP_BIG_N);
    if (!p->big) {
        errno = ENOMEM;
        return fail(err, errlen, "receive buffers", ifname);
    }
    /* Without this an ETH_P_ALL socket also receives every frame it sends. */
    if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &v, sizeof v) < 0)
        return fail(err, errlen, "PACKET_IGNORE_OUTGOING", ifname);
    struct tpacket_req req;
    memset(&req, 0, sizeof req);
    req.tp_block_size = HP_RING_BLOCK;
    req.tp_block_nr = ring_frames / HP_RING_FPB;
    req.tp_frame_size = HP_RING_FRAME;
    req.tp_frame_nr = ring_frames;
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0)
        return fail(err, errlen, "PACKET_RX_RING", ifname);
    p->ring_len = (size_t)HP_RING_BLOCK * (ring_frames / HP_RING_FPB);
    p->ring = mmap(NULL, p->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p->ring == MAP_FAILED) {
        p->ring = NULL;
        return fail(err, errlen, "mmap of the rx ring", ifname);
    }
    v = 8 << 20; /* room for many 64 KB super-packets in flight; root may exceed wmem_max */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = (int)idx;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0)
        return fail(err, errlen, "bind(AF_PACKET)", ifname);
    return 0;
}

int hp_io_attach_tap(hp_port *p, int fd, char *err, size_t errlen)
{
    port_init(p, HP_PORT_TAP);
    p->fd = fd;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return fail(err, errlen, "O_NONBLOCK", "tap");
    int sz = (int)HP_VNET_LEN;
    if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0)
        return fail(err, errlen, "TUNSETVNETHDRSZ", "tap");
    /* We take partial checksums and TCP super-packets, so the environment's kernel need not
     * segment or checksum before handing us a packet (PACKET_IO.md: 2.0 -> 10 Gbit/s). */
    unsigned long off = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    if (ioctl(fd, TUNSETOFFLOAD, off) < 0)
        return fail(err, errlen, "TUNSETOFFLOAD", "tap");
    p->tapbuf = malloc((size_t)HP_TAP_SLOT * HP_TAP_BATCH);
    if (!p->tapbuf) {
        errno = ENOMEM;
        return fail(err, errlen, "receive buffers", "tap");
    }
    hp_io_tap_setup(p);
    return 0;
}

int hp_io_attach_tap_tx(hp_port *p, int fd, char *err, size_t errlen)
{
    port_init(p, HP_PORT_TAP);
    p->tap_io = HP_TAP_IO_RW;
    p->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (p->fd < 0)
        return fail(err, errlen, "dup", "tap");
    return 0;
}

int hp_io_fanout_join(hp_port *p, uint16_t *id, const void *fprog, char *err, size_t errlen)
{
    int first = *id == 0;
    int v = (first ? 0 : *id) | ((PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_IGNORE_OUTGOING |
                                  (first ? PACKET_FANOUT_FLAG_UNIQUEID : 0)) << 16);
    if (setsockopt(p->fd, SOL_PACKET, PACKET_FANOUT, &v, sizeof v) < 0)
        return fail(err, errlen, "PACKET_FANOUT", "a worker's socket");
    if (!first)
        return 0;
    socklen_t len = sizeof v;
    if (getsockopt(p->fd, SOL_PACKET, PACKET_FANOUT, &v, &len) < 0)
        return fail(err, errlen, "PACKET_FANOUT (its id)", "a worker's socket");
    *id = (uint16_t)(v & 0xFFFF);
    if (setsockopt(p->fd, SOL_PACKET, PACKET_FANOUT_DATA, fprog, sizeof(struct sock_fprog)) < 0)
        return fail(err, errlen, "PACKET_FANOUT_DATA (the steering program)", "a worker's socket");
    return 0;
}

void hp_io_close(hp_port *p)
{
    hp_io_tap_close(p);
    if (p->ring)
        munmap(p->ring, p->ring_len);
    if (p->fd >= 0)
        close(p->fd);
    free(p->tapbuf);
    free(p->big);
    p->ring = NULL;
    p->tapbuf = NULL;
    p->big = NULL;
    p->fd = -1;
}

void hp_io_ring_stats(hp_port *p)
{
    struct tpacket_stats st;
    socklen_t len = sizeof st;
    if (p->kind != HP_PORT_PACKET || p->fd < 0)
        return;
    if (getsockopt(p->fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0) { /* read = reset */
        p->rx_ring_drops += st.tp_drops;
    }
}

static struct tpacket2_hdr *frame_at(const hp_port *p, uint32_t i)
{
    return (struct tpacket2_hdr *)(p->ring + (size_t)(i / HP_RING_FPB) * HP_RING_BLOCK +
                                   (size_t)(i % HP_RING_FPB) * HP_RING_FRAME);
}

int hp_io_ring_ready(const hp_port *p)
{
    /* not a whole lap taken and not given back yet, and the kernel has filled the next one */
    return p->rx_taken < p->ring_frames &&
           (__atomic_load_n(&frame_at(p, p->rx_head)->tp_status, __ATOMIC_ACQUIRE) &
            TP_STATUS_USER);
}

struct tpacket2_hdr *hp_io_ring_next(hp_port *p)
{
    if (!hp_io_ring_ready(p))
        return NULL;
    struct tpacket2_hdr *h = frame_at(p, p->rx_head);
    p->rx_head = p->rx_head + 1 == p->ring_frames ? 0 : p->rx_head + 1;
    p->rx_taken++;
    return h;
}

int hp_io_recv_big(hp_port *p, uint8_t **buf)
{
    uint8_t *b = p->big + (size_t)p->nbig * HP_BIG_SLOT;
    ssize_t r;
    do
        r = recv(p->fd, b, HP_BIG_SLOT, MSG_DONTWAIT | MSG_TRUNC);
    while (r < 0 && errno == EINTR);
    if (r < (ssize_t)HP_VNET_LEN || r > (ssize_t)HP_BIG_SLOT)
        return -1;
    p->nbig++;
    *buf = b;
    return (int)r;
}

void hp_io_ring_release(hp_port *p)
{
    uint32_t i = (p->rx_head + p->ring_frames - p->rx_taken) % p->ring_frames;
    for (; p->rx_taken; p->rx_taken--) {
        __atomic_store_n(&frame_at(p, i)->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        i = i + 1 == p->ring_frames ? 0 : i + 1;
    }
}

void hp_io_send(hp_port *p, const struct virtio_net_hdr *vh, uint8_t *frame, uint32_t len)
{
    if (p->ntx == HP_TXQ)
        hp_io_flush(p);
    hp_txslot *s = &p->tx[p->ntx];
    s->vh = *vh;
    /* DATA_VALID means "already verified" on receive; it has no meaning on transmit, and we
     * changed the packet, so it must not travel on. */
    s->vh.flags &= VIRTIO_NET_HDR_F_NEEDS_CSUM;
    s->iov[0].iov_base = &s->vh;
    s->iov[0].iov_len = HP_VNET_LEN;
    s->iov[1].iov_base = frame;
    s->iov[1].iov_len = len;
    struct msghdr *m = &p->msgs[p->ntx].msg_hdr;
    memset(m, 0, sizeof *m);
    m->msg_iov = s->iov;
    m->msg_iovlen = 2;
    /* atomic stores: with the inbound worker, hp_flush_all's look at ntx is without the lock */
    __atomic_store_n(&p->ntx, p->ntx + 1, __ATOMIC_RELAXED);
}

void hp_io_flush(hp_port *p)
{
    uint32_t i = 0;
    if (p->kind == HP_PORT_PACKET) {
        while (i < p->ntx) {
            int r = sendmmsg(p->fd, p->msgs + i, p->ntx - i, MSG_DONTWAIT);
            if (r > 0) {
                for (int k = 0; k < r; k++)
                    p->tx_bytes += p->tx[i + k].iov[1].iov_len;
                p->tx_packets += (uint64_t)r;
                i += (uint32_t)r;
            } else if (r < 0 && errno == EINTR) {
                continue;
            } else {
                p->tx_errors++; /* ENOBUFS/EAGAIN or a frame the kernel refused: drop it */
                i++;
            }
        }
    } else {
        if (p->tap_io == HP_TAP_IO_URING) {
            hp_io_tap_flush(p);
            if (!p->ntx)
                return;
            /* io_uring failed and was given up: what is queued goes out the plain way */
        }
        for (; i < p->ntx; i++) {
            ssize_t r;
            do
                r = writev(p->fd, p->tx[i].iov, 2);
            while (r < 0 && errno == EINTR);
            if (r < 0) {
                p->tx_errors++;
            } else {
                p->tx_packets++;
                p->tx_bytes += p->tx[i].iov[1].iov_len;
            }
        }
    }
    __atomic_store_n(&p->ntx, 0, __ATOMIC_RELAXED);
}

int hp_io_send_now(hp_port *p, const struct virtio_net_hdr *vh, const uint8_t *frame,
                   uint32_t len)
{
    struct virtio_net_hdr h = *vh;
    h.flags &= VIRTIO_NET_HDR_F_NEEDS_CSUM;
    struct iovec iov[2] = {{&h, HP_VNET_LEN}, {(void *)frame, len}};
    ssize_t r;
    do
        r = writev(p->fd, iov, 2); /* write on a bound AF_PACKET socket sends on its link */
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        p->tx_errors++;
        return -1;
    }
    p->tx_packets++;
    p->tx_bytes += len;
    return 0;
}
