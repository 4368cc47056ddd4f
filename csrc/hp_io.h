/* hp_io.h - packet I/O on one link: an AF_PACKET socket with a TPACKET_V3 receive ring on a
 * veth, or the file descriptor of a TAP device. Every packet carries a virtio-net header both
 * ways (PACKET_VNET_HDR / IFF_VNET_HDR), so 64 KB TSO super-packets and CHECKSUM_PARTIAL
 * packets pass whole: received with their gso_type/gso_size/csum_start/csum_offset, rewritten
 * once, sent on with the same header. See shared/PACKET_IO.md for the measurements behind each
 * choice (ring block size, IGNORE_OUTGOING, why not recvmmsg or AF_XDP).
 */
#ifndef HP_IO_H
#define HP_IO_H

#include <linux/virtio_net.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

enum hp_port_kind { HP_PORT_PACKET = 1, HP_PORT_TAP = 2 };

#define HP_VNET_LEN ((uint32_t)sizeof(struct virtio_net_hdr)) /* 10 */
/* Ring geometry. A block must hold a whole 64 KB super-packet (PACKET_IO.md: 32 KiB blocks
 * clamp them and TCP collapses). The kernel hands a block over when it is full or when the
 * retire timeout passes, which is one jiffy at least (4 ms at HZ=250): at a low packet rate
 * every packet can take a block of its own, so the *number* of blocks is how long the loop may
 * be away (a control request, a slow tick) before the kernel drops. 32 x 256 KiB = 8 MiB per
 * link keeps ~128 ms of such trickle, and 8 MiB of bulk. */
#define HP_RING_BLOCK (256u << 10)
#define HP_RING_BLOCKS 32
#define HP_RING_TIMEOUT_MS 1
#define HP_TAP_SLOT (65536u + 256u)
#define HP_TAP_BATCH 32
#define HP_TXQ 64

typedef struct {
    struct virtio_net_hdr vh;
    struct iovec iov[2];
} hp_txslot;

typedef struct {
    int kind, fd, ifindex;
    /* AF_PACKET receive ring */
    uint8_t *ring;
    size_t ring_len;
    uint32_t cur_block;
    /* TAP receive slots: HP_TAP_BATCH x (virtio-net header + frame) */
    uint8_t *tapbuf;
    /* transmit batch: iovecs point at frames that stay valid until hp_io_flush */
    hp_txslot tx[HP_TXQ];
    struct mmsghdr msgs[HP_TXQ];
    uint32_t ntx;
    uint64_t tx_packets, tx_bytes, tx_errors;
    uint64_t rx_ring_drops, rx_ring_freezes; /* the kernel's PACKET_STATISTICS, accumulated */
} hp_port;

/* Open an AF_PACKET socket on ifname (in the caller's network namespace) with a TPACKET_V3 rx
 * ring and virtio-net headers. Returns 0, or -1 with a message in err. */
int hp_io_open_packet(hp_port *p, const char *ifname, char *err, size_t errlen);
/* Take over an open TAP fd (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR): non-blocking, 10-byte header,
 * offloads TUN_F_CSUM|TSO4|TSO6 so the environment's kernel hands us super-packets. */
int hp_io_attach_tap(hp_port *p, int fd, char *err, size_t errlen);
void hp_io_close(hp_port *p);
/* Add the kernel's receive drops since the last call (frames lost because no ring block was
 * free) to p->rx_ring_drops. */
void hp_io_ring_stats(hp_port *p);

/* The next filled ring block, or NULL. Walk it with the tpacket3_hdr chain, then release. */
struct tpacket_block_desc *hp_io_ring_next(hp_port *p);
void hp_io_ring_release(hp_port *p);

/* Queue a frame (with its header) for sending; flushes first when the batch is full. */
void hp_io_send(hp_port *p, const struct virtio_net_hdr *vh, uint8_t *frame, uint32_t len);
/* Send everything queued: sendmmsg on AF_PACKET, one writev per packet on TAP. */
void hp_io_flush(hp_port *p);
/* Send one frame now, bypassing the batch (ARP/NDP, packets that waited for a neighbour). */
int hp_io_send_now(hp_port *p, const struct virtio_net_hdr *vh, const uint8_t *frame,
                   uint32_t len);

#endif
