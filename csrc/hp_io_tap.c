/* hp_io_tap.c - TAP packet I/O through io_uring: no system call per packet (see hp_io.h).
 *
 * Receive: one multishot read (IORING_OP_READ_MULTISHOT, kernel >= 6.7) on the TAP, into a ring
 * of HP_TAP_RX provided buffers. It has one entry on the TAP's wait queue, so a packet wakes it
 * once (posting N single reads would wake all N per packet); the kernel reads while packets are
 * queued and puts a completion per packet, in the order the TAP queued them, on the completion
 * ring. The ring is set up with COOP_TASKRUN: those reads run as task work when the loop's
 * thread next leaves the kernel (epoll_wait returning, a sendmmsg), so the loop usually finds
 * the packets already there and takes them with plain loads. When every buffer is in use the
 * read ends (-ENOBUFS) and is armed again once the buffers are given back: one io_uring_enter
 * per HP_TAP_RX packets at the worst.
 *
 * Send: a second ring (the worker thread may flush a TAP while the loop receives on it) gets a
 * writev per queued packet, all submitted by one io_uring_enter that waits for them; TAP writes
 * complete during that call, so its frames are free again when it returns, as with writev.
 *
 * The read is armed by the thread that services the link, lazily: its task work runs on that
 * thread. The TAP stays in the loop's epoll set (readable while packets wait), and the receive
 * ring's fd joins it (readable while completions wait: task work that ran on the way out of
 * some other system call may have taken the packets off the TAP already; without it such a
 * packet waited until the loop woke for something else: 200 ms at the p99 of a request/response
 * test). The loop sleeps and wakes as before.
 *
 * No liburing: the three system calls and the shared rings, as <linux/io_uring.h> describes them
 * (the names newer than this machine's headers are defined here).
 */
#define _GNU_SOURCE
#include "hp_io.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HP_IORING_OP_READ_MULTISHOT 49 /* 6.7; one past IORING_OP_SENDMSG_ZC */
_Static_assert(IORING_OP_SENDMSG_ZC == 48, "io_uring opcode numbering");
#define HP_BGID 1

typedef struct {
    int fd;
    unsigned sq_entries, cq_entries;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_flags, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_map_len, cq_map_len, sqes_len;
} hp_uring;

struct hp_tap_uring {
    hp_uring rx, tx;
    struct io_uring_buf_ring *br; /* HP_TAP_RX provided buffers' ring */
    size_t br_len;
    uint16_t br_tail;
    uint8_t *bufs;    /* HP_TAP_RX x HP_TAP_SLOT */
    int armed;        /* the multishot read is in flight */
    int rx_error;     /* the read failed for good (an errno): read() from tap_release on */
    int tx_error;     /* a batch of writes could not be submitted: writev from then on */
    uint16_t taken[HP_TAP_RX]; /* buffers handed out since the last release */
    uint32_t ntaken;
};

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned submit, unsigned complete, unsigned flags)
{
    int r;
    do
        r = (int)syscall(__NR_io_uring_enter, fd, submit, complete, flags, NULL, 0);
    while (r < 0 && errno == EINTR);
    return r;
}

static int sys_register(int fd, unsigned op, void *arg, unsigned n)
{
    return (int)syscall(__NR_io_uring_register, fd, op, arg, n);
}

static void ring_close(hp_uring *u)
{
    if (u->sqes && u->sqes != MAP_FAILED)
        munmap(u->sqes, u->sqes_len);
    if (u->cq_map && u->cq_map != MAP_FAILED && u->cq_map != u->sq_map)
        munmap(u->cq_map, u->cq_map_len);
    if (u->sq_map && u->sq_map != MAP_FAILED)
        munmap(u->sq_map, u->sq_map_len);
    if (u->fd >= 0)
        close(u->fd);
    memset(u, 0, sizeof *u);
    u->fd = -1;
}

static int ring_open(hp_uring *u, unsigned entries, unsigned cq_entries, unsigned flags,
                     const char **what)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags | (cq_entries ? IORING_SETUP_CQSIZE : 0);
    p.cq_entries = cq_entries;
    u->fd = sys_setup(entries, &p);
    if (u->fd < 0) {
        *what = "io_uring_setup";
        return -1;
    }
    u->sq_entries = p.sq_entries;
    u->cq_entries = p.cq_entries;
    u->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    u->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP && u->cq_map_len > u->sq_map_len)
        u->sq_map_len = u->cq_map_len;
    u->sq_map = mmap(NULL, u->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                     u->fd, IORING_OFF_SQ_RING);
    if (u->sq_map == MAP_FAILED) {
        *what = "mmap of the submission ring";
        return -1;
    }
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        u->cq_map = u->sq_map;
    } else {
        u->cq_map = mmap(NULL, u->cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                         u->fd, IORING_OFF_CQ_RING);
        if (u->cq_map == MAP_FAILED) {
            *what = "mmap of the completion ring";
            return -1;
        }
    }
    u->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    u->sqes = mmap(NULL, u->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
                   IORING_OFF_SQES);
    if (u->sqes == MAP_FAILED) {
        *what = "mmap of the submission entries";
        return -1;
    }
    uint8_t *sq = u->sq_map, *cq = u->cq_map;
    u->sq_head = (unsigned *)(sq + p.sq_off.head);
    u->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    u->sq_flags = (unsigned *)(sq + p.sq_off.flags);
    u->sq_array = (unsigned *)(sq + p.sq_off.array);
    u->cq_head = (unsigned *)(cq + p.cq_off.head);
    u->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    u->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    for (unsigned i = 0; i < p.sq_entries; i++)
        u->sq_array[i] = i; /* entry i in slot i, always */
    return 0;
}

/* A zeroed submission entry at the tail, not yet visible to the kernel (ring_publish). */
static struct io_uring_sqe *sqe_get(hp_uring *u, unsigned *tail)
{
    struct io_uring_sqe *e = &u->sqes[*tail & *u->sq_mask];
    memset(e, 0, sizeof *e);
    (*tail)++;
    return e;
}

static void ring_publish(hp_uring *u, unsigned tail)
{
    __atomic_store_n(u->sq_tail, tail, __ATOMIC_RELEASE);
}

static void buf_give(struct hp_tap_uring *t, uint16_t bid)
{
    struct io_uring_buf *b = &t->br->bufs[t->br_tail & (HP_TAP_RX - 1)];
    b->addr = (uint64_t)(uintptr_t)(t->bufs + (size_t)bid * HP_TAP_SLOT);
    b->len = HP_TAP_SLOT;
    b->bid = bid;
    t->br_tail++;
}

static void buf_publish(struct hp_tap_uring *t)
{
    __atomic_store_n(&t->br->tail, t->br_tail, __ATOMIC_RELEASE);
}

static char fallback_reason[200];

const char *hp_io_tap_fallback_reason(void)
{
    return fallback_reason;
}

static void tap_uring_free(struct hp_tap_uring *t)
{
    if (!t)
        return;
    ring_close(&t->rx);
    ring_close(&t->tx);
    if (t->br && t->br != MAP_FAILED)
        munmap(t->br, t->br_len);
    free(t->bufs);
    free(t);
}

void hp_io_tap_close(hp_port *p)
{
    tap_uring_free(p->tap);
    p->tap = NULL;
}

/* The receive side failed at run time: read()/writev() on this port from now on, saying why.
 * Called by the receiving thread once no send points into the buffers; the send ring stays
 * until hp_io_close (the worker thread may be in hp_io_tap_flush right now: it sees tap_io
 * change at its next flush). */
static void tap_fallback(hp_port *p, const char *what, int err)
{
    struct hp_tap_uring *t = p->tap;
    snprintf(fallback_reason, sizeof fallback_reason, "%s: %s", what, strerror(err));
    int fl = fcntl(p->fd, F_GETFL);
    if (fl >= 0)
        (void)fcntl(p->fd, F_SETFL, fl | O_NONBLOCK);
    __atomic_store_n(&p->tap_io, HP_TAP_IO_RW, __ATOMIC_RELEASE);
    ring_close(&t->rx); /* its fd leaves the epoll set as it closes */
    if (t->br && t->br != MAP_FAILED)
        munmap(t->br, t->br_len);
    t->br = NULL;
    free(t->bufs);
    t->bufs = NULL;
    t->ntaken = 0;
    t->rx_error = 0;
}

void hp_io_tap_setup(hp_port *p)
{
    p->tap_io = HP_TAP_IO_RW;
    const char *want = getenv("HYPERPLANE_TAP_IO");
    if (want && !strcmp(want, "rw")) {
        snprintf(fallback_reason, sizeof fallback_reason, "HYPERPLANE_TAP_IO=rw");
        return;
    }
    const char *what = "out of memory";
    int err = ENOMEM;
    struct hp_tap_uring *t = calloc(1, sizeof *t);
    if (!t)
        goto fail;
    t->rx.fd = t->tx.fd = -1;
    t->bufs = malloc((size_t)HP_TAP_SLOT * HP_TAP_RX);
    if (!t->bufs)
        goto fail;
    /* The receive ring: only the multishot read and its re-arming go in; a completion per
     * packet, HP_TAP_RX at most before it stops for buffers, so twice that is room enough. The
     * send ring: a batch of writes. */
    if (ring_open(&t->rx, 4, 2 * HP_TAP_RX, IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
                  &what) < 0 ||
        ring_open(&t->tx, HP_TXQ, 0, IORING_SETUP_SUBMIT_ALL, &what) < 0)
        goto fail_errno;
    /* Does this kernel know the multishot read? */
    size_t plen = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = calloc(1, plen);
    if (!probe)
        goto fail;
    if (sys_register(t->rx.fd, IORING_REGISTER_PROBE, probe, 256) < 0) {
        free(probe);
        what = "io_uring probe";
        goto fail_errno;
    }
    int ok = probe->last_op >= HP_IORING_OP_READ_MULTISHOT &&
             (probe->ops[HP_IORING_OP_READ_MULTISHOT].flags & IO_URING_OP_SUPPORTED);
    free(probe);
    if (!ok) {
        what = "io_uring multishot read (kernel 6.7)";
        err = EOPNOTSUPP;
        goto fail;
    }
    int fds[1] = {p->fd};
    if (sys_register(t->rx.fd, IORING_REGISTER_FILES, fds, 1) < 0 ||
        sys_register(t->tx.fd, IORING_REGISTER_FILES, fds, 1) < 0) {
        what = "io_uring registered file";
        goto fail_errno;
    }
    t->br_len = HP_TAP_RX * sizeof(struct io_uring_buf);
    t->br = mmap(NULL, t->br_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t->br == MAP_FAILED) {
        what = "mmap of the buffer ring";
        goto fail_errno;
    }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)t->br;
    reg.ring_entries = HP_TAP_RX;
    reg.bgid = HP_BGID;
    if (sys_register(t->rx.fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        what = "io_uring provided buffers";
        goto fail_errno;
    }
    for (uint16_t i = 0; i < HP_TAP_RX; i++)
        buf_give(t, i);
    buf_publish(t);
    /* The reads must wait for packets (poll) rather than fail with EAGAIN: the loop never
     * read()s this fd while io_uring does. Writes to a TAP never wait anyway. */
    int fl = fcntl(p->fd, F_GETFL);
    if (fl < 0 || fcntl(p->fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        what = "clearing O_NONBLOCK";
        goto fail_errno;
    }
    p->tap = t;
    p->tap_io = HP_TAP_IO_URING;
    return;
fail_errno:
    err = errno;
fail:
    tap_uring_free(t);
    p->tap = NULL;
    snprintf(fallback_reason, sizeof fallback_reason, "%s: %s", what, strerror(err));
}

static int rx_arm(hp_port *p)
{
    struct hp_tap_uring *t = p->tap;
    unsigned tail = *t->rx.sq_tail;
    struct io_uring_sqe *e = sqe_get(&t->rx, &tail);
    e->opcode = HP_IORING_OP_READ_MULTISHOT;
    e->fd = 0; /* registered file 0 */
    e->flags = IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    e->buf_group = HP_BGID;
    e->len = 0; /* the whole provided buffer */
    e->off = (uint64_t)-1;
    e->user_data = 1;
    ring_publish(&t->rx, tail);
    if (sys_enter(t->rx.fd, 1, 0, 0) < 0) {
        tap_fallback(p, "io_uring multishot read", errno);
        return -1;
    }
    t->armed = 1;
    return 0;
}

int hp_io_tap_next(hp_port *p, uint8_t **buf)
{
    struct hp_tap_uring *t = p->tap;
    if (t->rx_error)
        return -1;
    for (int pass = 0; pass < 2; pass++) {
        unsigned head = *t->rx.cq_head;
        while (head != __atomic_load_n(t->rx.cq_tail, __ATOMIC_ACQUIRE)) {
            struct io_uring_cqe *c = &t->rx.cqes[head & *t->rx.cq_mask];
            int res = c->res;
            unsigned flags = c->flags;
            head++;
            __atomic_store_n(t->rx.cq_head, head, __ATOMIC_RELEASE);
            if (!(flags & IORING_CQE_F_MORE))
                t->armed = 0; /* out of buffers (-ENOBUFS) or an error: armed again later */
            if (flags & IORING_CQE_F_BUFFER) {
                uint16_t bid = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);
                t->taken[t->ntaken++] = bid;
                if (res >= 0) {
                    *buf = t->bufs + (size_t)bid * HP_TAP_SLOT;
                    return res;
                }
            } else if (res < 0 && res != -ENOBUFS && res != -EAGAIN && res != -EINTR &&
                       res != -ECANCELED) {
                /* sends queued on other links may still point into the buffers: leave
                 * io_uring in tap_release, after they were flushed */
                t->rx_error = -res;
                return -1;
            }
        }
        if (pass || t->ntaken == HP_TAP_RX)
            break;
        if (!t->armed) {
            /* first call, or the read stopped: arm it (what is queued completes at once) */
            if (t->ntaken)
                break; /* it stopped for buffers: the caller gives them back first */
            if (rx_arm(p) < 0)
                return -1;
        } else if (__atomic_load_n(t->rx.sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_TASKRUN) {
            /* reads are waiting to run as task work: run them */
            if (sys_enter(t->rx.fd, 0, 0, IORING_ENTER_GETEVENTS) < 0)
                return -1;
        } else {
            break;
        }
    }
    return -1;
}

void hp_io_tap_release(hp_port *p)
{
    struct hp_tap_uring *t = p->tap;
    if (t && t->rx_error) {
        tap_fallback(p, "io_uring multishot read", t->rx_error);
        return;
    }
    if (!t || !t->ntaken)
        return;
    for (uint32_t i = 0; i < t->ntaken; i++)
        buf_give(t, t->taken[i]);
    t->ntaken = 0;
    buf_publish(t);
}

int hp_io_tap_ready(const hp_port *p)
{
    const struct hp_tap_uring *t = p->tap;
    return *t->rx.cq_head != __atomic_load_n(t->rx.cq_tail, __ATOMIC_ACQUIRE) ||
           (__atomic_load_n(t->rx.sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_TASKRUN);
}

int hp_io_tap_wait_fd(const hp_port *p)
{
    return p->tap && p->tap_io == HP_TAP_IO_URING ? p->tap->rx.fd : -1;
}

void hp_io_tap_flush(hp_port *p)
{
    struct hp_tap_uring *t = p->tap;
    unsigned n = p->ntx;
    if (!n || t->tx_error)
        return; /* nothing, or hp_io_flush writes them one by one */
    unsigned tail = *t->tx.sq_tail;
    for (unsigned i = 0; i < n; i++) {
        struct io_uring_sqe *e = sqe_get(&t->tx, &tail);
        e->opcode = IORING_OP_WRITEV;
        e->fd = 0;
        e->flags = IOSQE_FIXED_FILE;
        e->addr = (uint64_t)(uintptr_t)p->tx[i].iov;
        e->len = 2;
        e->user_data = i;
    }
    ring_publish(&t->tx, tail);
    /* TAP writes complete inside this call; waiting for all n costs no sleep. */
    int r = sys_enter(t->tx.fd, n, n, IORING_ENTER_GETEVENTS);
    if (r < 0) {
        /* nothing was taken: send them the plain way and use that from now on (only the
         * writes: this may be the worker thread, while the loop receives through the rings) */
        t->tx_error = errno;
        snprintf(fallback_reason, sizeof fallback_reason, "io_uring writev: %s",
                 strerror(errno));
        *t->tx.sq_tail = tail - n; /* take the entries back (not seen by the kernel) */
        return;
    }
    unsigned done = 0, head = *t->tx.cq_head;
    while (done < n) {
        while (head == __atomic_load_n(t->tx.cq_tail, __ATOMIC_ACQUIRE)) {
            if (sys_enter(t->tx.fd, 0, 1, IORING_ENTER_GETEVENTS) < 0)
                break;
        }
        if (head == __atomic_load_n(t->tx.cq_tail, __ATOMIC_ACQUIRE))
            break;
        struct io_uring_cqe *c = &t->tx.cqes[head & *t->tx.cq_mask];
        if (c->res < 0) {
            p->tx_errors++;
        } else {
            p->tx_packets++;
            p->tx_bytes += p->tx[c->user_data].iov[1].iov_len;
        }
        head++;
        done++;
    }
    __atomic_store_n(t->tx.cq_head, head, __ATOMIC_RELEASE);
    p->tx_errors += n - done;
    __atomic_store_n(&p->ntx, 0, __ATOMIC_RELAXED); /* see hp_io_send */
}
