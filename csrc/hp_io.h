/* hp_io.h - packet I/O on one link: an AF_PACKET socket with a TPACKET_V2 receive ring (and
 * its socket queue for super-packets) on a veth, or the file descriptor of a TAP device (read and
 * written through io_uring, hp_io_tap.c, or one read/writev per packet where that fails). Every
 * packet carries a virtio-net header both ways (PACKET_VNET_HDR / IFF_VNET_HDR), so 64 KB TSO
 * super-packets and CHECKSUM_PARTIAL packets pass whole: received with their gso_type/gso_size/
 * csum_start/csum_offset, rewritten once, sent on with the same header. See shared/PACKET_IO.md
 * for the measurements behind each choice (IGNORE_OUTGOING, why not recvmmsg or AF_XDP) and
 * below for why this ring is V2 where PACKET_IO.md's throwaway forwarder used V3.
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
/* Receiving on a veth: a TPACKET_V2 ring of small frames, plus the socket's own queue for
 * super-packets.
 *
 * Why V2 and not V3. TPACKET_V3 packs packets into blocks and hands a block to user space only
 * when it is full or its retire timer fires -- one jiffy at least, 4 ms at HZ=250. For bulk TCP
 * that is fine; for everything that waits on a reply (a request/response, a handshake, ACK
 * clocking at low rates) it adds up to 4 ms per hop: measured through the lab, a 64-byte TCP
 * request/response took 1,000 us at the median with V3 (the kernel's own NAT: ~25 us). A V2
 * frame is the user's as soon as the kernel has written it, with a wakeup per packet when the
 * loop sleeps; under load the loop still takes every ready frame in one pass.
 *
 * Why small frames. V2 frames have one size. Frames big enough for a 64 KB GSO super-packet
 * (PACKET_IO.md: clamping one makes TCP collapse) would give a 16 MiB ring only ~250 slots, and
 * a burst of small packets (64-byte UDP, ACKs, SYNs) would overflow it while the loop is
 * preempted. So frames are 2 KiB (an MTU frame fits) and there are 4,096 of them (8 MiB), and a
 * packet that does not fit takes the kernel's PACKET_COPY_THRESH path: its frame holds the
 * first bytes with TP_STATUS_COPY set, and the whole packet is queued on the socket (a
 * reference, not a copy) in the same order, to be read with one recv() per super-packet --
 * one system call per 64 KB. The ring keeps the order of everything. */
#ifndef HP_RING_FRAME /* -D overrides are for experiments (benchmarks/RESULTS.md) */
#define HP_RING_FRAME 2048u
#define HP_RING_BLOCK (256u << 10)
#endif
#define HP_RING_FPB (HP_RING_BLOCK / HP_RING_FRAME)
/* Frames per ring: a lab's [datapath] ring_frames, a multiple of HP_RING_FPB. How long a
 * stall of the loop a link absorbs: 4,096 frames are 23 ms of 64-byte packets at 175 kpps. */
#define HP_RING_FRAMES_DEFAULT 4096u
#define HP_RING_FRAMES_MIN 1024u
#define HP_RING_FRAMES_MAX 65536u
/* Super-packets taken off the socket queue wait in these buffers until their sends are flushed
 * (the loop flushes when all are in use). 64 KiB of IP packet + Ethernet + virtio-net header. */
#define HP_BIG_SLOT (65536u + 512u)
#define HP_BIG_N 8
#define HP_RCVBUF (32 << 20) /* the socket queue's bound (the kernel doubles it) */
#define HP_TAP_SLOT (65536u + 256u)
#define HP_TAP_BATCH 32
#define HP_TAP_RX 64 /* io_uring receive buffers per TAP (a power of two) */
#define HP_TXQ 64

/* How a TAP moves packets (hp_io_tap.c): io_uring, a batch of packets per system call at most,
 * or one read()/writev() per packet -- where io_uring cannot be set up (an old kernel,
 * kernel.io_uring_disabled, a seccomp filter) or HYPERPLANE_TAP_IO=rw asks for it. */
enum hp_tap_io { HP_TAP_IO_NONE = 0, HP_TAP_IO_RW = 1, HP_TAP_IO_URING = 2 };
struct hp_tap_uring;

typedef struct {
    struct virtio_net_hdr vh;
    struct iovec iov[2];
} hp_txslot;

typedef struct {
    int kind, fd, ifindex;
    /* AF_PACKET receive ring */
    uint8_t *ring;
    size_t ring_len;
    uint32_t ring_frames; /* frames in the ring */
    uint32_t rx_head;  /* the next frame to look at, 0 .. ring_frames-1 */
    uint32_t rx_taken; /* frames before rx_head taken but not yet given back (sends may point
                        * into them) */
    uint8_t *big;      /* HP_BIG_N buffers of HP_BIG_SLOT for super-packets */
    uint32_t nbig;     /* of them in use (their sends not yet flushed) */
    /* TAP receive slots: HP_TAP_BATCH x (virtio-net header + frame), for read() */
    uint8_t *tapbuf;
    int tap_io;               /* enum hp_tap_io */
    struct hp_tap_uring *tap; /* its rings and buffers, with HP_TAP_IO_URING */
    /* transmit batch: iovecs point at frames that stay valid until hp_io_flush */
    hp_txslot tx[HP_TXQ];
    struct mmsghdr msgs[HP_TXQ];
    uint32_t ntx;
    uint64_t tx_packets, tx_bytes, tx_errors;
    uint64_t rx_packets, rx_bytes; /* frames taken from this port (by its one thread) */
    uint64_t rx_ring_drops; /* the kernel's PACKET_STATISTICS, accumulated */
} hp_port;

/* Open an AF_PACKET socket on ifname (in the caller's network namespace) with a TPACKET_V2 rx
 * ring of ring_frames frames (0: HP_RING_FRAMES_DEFAULT) and virtio-net headers. Returns 0, or
 * -1 with a message in err. */
int hp_io_open_packet(hp_port *p, const char *ifname, uint32_t ring_frames, char *err,
                      size_t errlen);
/* Take over an open TAP fd (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR): 10-byte header, offloads
 * TUN_F_CSUM|TSO4|TSO6 so the environment's kernel hands us super-packets; io_uring where it can be had (p->tap_io says), else non-blocking
 * read/writev. */
int hp_io_attach_tap(hp_port *p, int fd, char *err, size_t errlen);
void hp_io_close(hp_port *p);
/* A second port on a TAP for another thread's sends (its own batch): a dup of fd, written with
 * writev, never read. */
int hp_io_attach_tap_tx(hp_port *p, int fd, char *err, size_t errlen);
/* Put a packet socket into fanout group *id (0: a new group, whose id is stored in *id), mode
 * PACKET_FANOUT_CBPF; the first member also sets the program. Members are numbered in the order
 * they join: the program's result modulo their number picks one. */
int hp_io_fanout_join(hp_port *p, uint16_t *id, const void *fprog, char *err, size_t errlen);
/* Add the kernel's receive drops since the last call (frames lost because no ring block was
 * free) to p->rx_ring_drops. */
void hp_io_ring_stats(hp_port *p);

/* Take the whole packet a TP_STATUS_COPY frame stands for off the socket queue into a free big
 * buffer: returns its length (virtio-net header first) and sets *buf, or -1 when the queue had
 * nothing (the kernel could not queue it: out of receive buffer) or it did not fit. The caller
 * flushes and sets nbig = 0 first when all buffers are in use. */
int hp_io_recv_big(hp_port *p, uint8_t **buf);
/* The next frame the kernel has filled, or NULL; taking it advances rx_head. Frames stay the
 * caller's until hp_io_ring_release gives back everything taken so far (after the sends that
 * point into them were flushed). */
struct tpacket2_hdr *hp_io_ring_next(hp_port *p);
/* Whether hp_io_ring_next would return a frame (a look, nothing taken). */
int hp_io_ring_ready(const hp_port *p);
void hp_io_ring_release(hp_port *p);

/* Queue a frame (with its header) for sending; flushes first when the batch is full. */
void hp_io_send(hp_port *p, const struct virtio_net_hdr *vh, uint8_t *frame, uint32_t len);
/* Send everything queued: sendmmsg on AF_PACKET; on TAP one io_uring_enter for the batch, or
 * one writev per packet. */
void hp_io_flush(hp_port *p);
/* Send one frame now, bypassing the batch (ARP/NDP, packets that waited for a neighbour). */
int hp_io_send_now(hp_port *p, const struct virtio_net_hdr *vh, const uint8_t *frame,
                   uint32_t len);

/* hp_io_tap.c: TAP through io_uring. setup picks p->tap_io (fallback_reason says why not
 * io_uring; empty when it is); the loop's thread takes packets with tap_next (the length with
 * its virtio-net header, and *buf; -1 when none is ready now), and after flushing the sends that
 * point into them gives the buffers back with tap_release (then tap_next takes more); tap_ready
 * is a look without a system call. The loop's epoll set holds the TAP and tap_wait_fd. A failure at run time falls back to read/writev for good. */
void hp_io_tap_setup(hp_port *p);
void hp_io_tap_close(hp_port *p);
int hp_io_tap_next(hp_port *p, uint8_t **buf);
void hp_io_tap_release(hp_port *p);
int hp_io_tap_ready(const hp_port *p);
void hp_io_tap_flush(hp_port *p);
/* The fd to wait on besides the TAP's (readable while completions wait), or -1. */
int hp_io_tap_wait_fd(const hp_port *p);
const char *hp_io_tap_fallback_reason(void);

#endif
