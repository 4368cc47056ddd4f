/* hp_dp.c - the data path's setup and teardown: groups, links, their addresses and state,
 * options, the clock. See hp_dp.h for the picture and hp_dp_internal.h for the other files.
 */
#define _GNU_SOURCE
#include "hp_dp_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

double hp_dp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of Python's time.monotonic() */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A link's ports: its own, and with workers each worker's (pt[w] != &port). */
static void close_ports(hp_dp *dp, hp_link *l)
{
    for (unsigned w = 1; w < HP_DP_MAX_WORKERS; w++)
        if (l->pt[w] && l->pt[w] != &l->port) {
            hp_io_close(l->pt[w]);
            free(l->pt[w]);
            l->pt[w] = &l->port;
        }
    (void)dp;
    hp_io_close(&l->port);
}

/* Each thread waits on the ports it receives with: without threads the loop on all; with the
 * inbound worker, it on the ENI links; with workers, each on its own socket of every veth,
 * and worker 0 alone on a TAP (and a TAP's io_uring completion ring, which the kernel may
 * fill during any system call of the loop's with packets the TAP then no longer shows as
 * readable). */
static int watch_ports(hp_dp *dp, hp_link *l, unsigned index, char *err, size_t errlen)
{
    unsigned n = dp->mt == HP_MT_WORKERS ? dp->n_threads : 1;
    for (unsigned w = 0; w < n; w++) {
        hp_port *p = PORT(l, w);
        if (w > 0 && p->kind == HP_PORT_TAP)
            continue; /* send only */
        int epfd = dp->wk[dp->mt == HP_MT_WORKERS ? w : (unsigned)link_thread(dp, l)].epfd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = index};
        int wfd = hp_io_tap_wait_fd(p);
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, p->fd, &ev) < 0 ||
            (wfd >= 0 && epoll_ctl(epfd, EPOLL_CTL_ADD, wfd, &ev) < 0)) {
            snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
            return -1; /* closing the ports takes them out of the epoll sets */
        }
    }
    return 0;
}

hp_dp *hp_dp_new(void)
{
    hp_dp *dp = calloc(1, sizeof *dp);
    if (!dp)
        return NULL;
    dp->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (dp->epfd < 0) {
        free(dp);
        return NULL;
    }
    for (unsigned i = 0; i < HP_DP_MAX_WORKERS; i++) {
        dp->wk[i].id = (int)i;
        dp->wk[i].epfd = dp->wk[i].wake = -1;
    }
    dp->wk[0].epfd = dp->epfd;
    dp->n_threads = 1;
    return dp;
}

void hp_dp_free(hp_dp *dp)
{
    if (!dp)
        return;
    hp_stop_threads(dp); /* first: they service links */
    for (unsigned i = 0; i < dp->n_links; i++) {
        hp_link *l = dp->links[i];
        for (unsigned s = 0; s < HP_NEIGH_SLOTS; s++)
            hp_neigh_free_queue(l->neigh.slot[s].qhead);
        close_ports(dp, l);
        free(l);
    }
    hp_steer_free(dp);
    if (dp->wk[0].wake >= 0)
        close(dp->wk[0].wake);
    close(dp->epfd);
    free(dp);
}

/* A group's engines: one shared by every thread, or with workers one per worker. */
int hp_dp_add_group_shards(hp_dp *dp, hp_engine *const *shards, int n)
{
    if (dp->n_groups >= HP_DP_MAX_GROUPS || n != (dp->mt == HP_MT_WORKERS ? (int)dp->n_threads : 1))
        return -1;
    for (unsigned w = 0; w < HP_DP_MAX_WORKERS; w++)
        dp->groups[dp->n_groups].shard[w] = shards[(int)w < n ? (int)w : 0];
    pthread_mutex_init(&dp->groups[dp->n_groups].lock, NULL);
    dp->groups[dp->n_groups].eni_link = -1;
    dp->groups[dp->n_groups].inside_link = -1;
    return (int)dp->n_groups++;
}

int hp_dp_add_group(hp_dp *dp, hp_engine *e)
{
    return hp_dp_add_group_shards(dp, &e, 1);
}

hp_link *hp_dp_link(hp_dp *dp, int link)
{
    return link >= 0 && (unsigned)link < dp->n_links ? dp->links[link] : NULL;
}

int hp_dp_add_link(hp_dp *dp, int role, int group, int kind, const char *ifname, int tap_fd,
                   const uint8_t *mac, char *err, size_t errlen)
{
    int bad_group = group < 0 || (unsigned)group >= dp->n_groups;
    if (dp->n_links >= HP_DP_MAX_LINKS || bad_group ||
        (role != HP_ROLE_ENV && role != HP_ROLE_ENI && role != HP_ROLE_INSIDE) ||
        (role == HP_ROLE_INSIDE && dp->groups[group].inside_link >= 0)) {
        if (kind == HP_PORT_TAP && tap_fd >= 0)
            close(tap_fd);
        if (!bad_group && role == HP_ROLE_INSIDE && dp->groups[group].inside_link >= 0)
            snprintf(err, errlen, "group %d already has an inside link (link %d)", group,
                     dp->groups[group].inside_link);
        else
            snprintf(err, errlen, "bad link: role %d group %d (%u groups, %u links)", role,
                     group, dp->n_groups, dp->n_links);
        return -1;
    }
    hp_link *l = calloc(1, sizeof *l);
    if (!l) {
        if (kind == HP_PORT_TAP)
            close(tap_fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (unsigned w = 0; w < HP_DP_MAX_WORKERS; w++)
        l->pt[w] = &l->port;
    int rc = kind == HP_PORT_TAP ? hp_io_attach_tap(&l->port, tap_fd, err, errlen)
                                 : hp_io_open_packet(&l->port, ifname, dp->ring_frames, err,
                                                     errlen);
    l->role = role;
    l->group = group;
    l->index = (int)dp->n_links;
    memcpy(l->mac, mac, 6);
    pthread_mutex_init(&l->lock, NULL);
    /* with workers: every worker's own port, a fanout member (veth) or a dup (TAP) */
    if (rc == 0 && dp->mt == HP_MT_WORKERS)
        rc = hp_fanout_link(dp, l, ifname, err, errlen);
    if (rc == 0)
        rc = watch_ports(dp, l, dp->n_links, err, errlen);
    if (rc < 0) {
        close_ports(dp, l);
        free(l);
        return -1;
    }
    if (role == HP_ROLE_ENI)
        dp->groups[group].eni_link = (int)dp->n_links;
    else if (role == HP_ROLE_INSIDE)
        dp->groups[group].inside_link = (int)dp->n_links;
    dp->links[dp->n_links] = l;
    return (int)dp->n_links++;
}

int hp_dp_add_own(hp_dp *dp, int link, int family, const uint8_t *addr)
{
    hp_link *l = hp_dp_link(dp, link);
    if (!l)
        return -1;
    if (family == 4 && l->n_own4 < HP_DP_MAX_OWN)
        memcpy(l->own4[l->n_own4++], addr, 4);
    else if (family == 6 && l->n_own6 < HP_DP_MAX_OWN)
        memcpy(l->own6[l->n_own6++], addr, 16);
    else
        return -1;
    return 0;
}

int hp_dp_remove_own(hp_dp *dp, int link, int family, const uint8_t *addr)
{
    hp_link *l = hp_dp_link(dp, link);
    if (!l || (family != 4 && family != 6))
        return -1;
    size_t alen = family == 4 ? 4 : 16;
    uint8_t *own = family == 4 ? &l->own4[0][0] : &l->own6[0][0];
    uint32_t *n = family == 4 ? &l->n_own4 : &l->n_own6;
    for (uint32_t i = 0; i < *n; i++) {
        if (memcmp(own + i * alen, addr, alen) != 0)
            continue;
        /* keep the order: the first address is the source of our ARP/NDP probes */
        memmove(own + i * alen, own + (i + 1) * alen, (*n - i - 1) * alen);
        (*n)--;
        return 0;
    }
    return -1;
}

static hp_link *env_link(hp_dp *dp, int link)
{
    hp_link *l = hp_dp_link(dp, link);
    return l && l->role == HP_ROLE_ENV ? l : NULL;
}

int hp_dp_set_link_group(hp_dp *dp, int link, int group)
{
    hp_link *l = env_link(dp, link);
    if (!l || group < 0 || (unsigned)group >= dp->n_groups)
        return -1;
    l->group = group;
    return 0;
}

int hp_dp_set_link_state(hp_dp *dp, int link, int state)
{
    hp_link *l = env_link(dp, link);
    if (!l || state < 0 || state >= HP_LINK_N_STATES)
        return -1;
    l->state = (uint8_t)state;
    return 0;
}

int hp_dp_set_link_ipv6(hp_dp *dp, int link, int allowed)
{
    hp_link *l = env_link(dp, link);
    if (!l)
        return -1;
    l->no_ipv6 = !allowed;
    return 0;
}

int hp_dp_set_group_options(hp_dp *dp, int group, int rst_unknown_tcp)
{
    if (group < 0 || (unsigned)group >= dp->n_groups)
        return -1;
    dp->groups[group].rst_unknown_tcp = rst_unknown_tcp != 0;
    return 0;
}

int hp_dp_set_clock_offset(hp_dp *dp, double offset)
{
    if (!(offset >= dp->clock_offset)) /* also refuses NaN */
        return -1;
    dp->clock_offset = offset;
    return 0;
}

double hp_dp_clock(const hp_dp *dp)
{
    return hp_dp_now() + dp->clock_offset;
}

/* ---- address -> environment link ------------------------------------------------------------ */
int hp_dp_set_env(hp_dp *dp, int link, int family, const uint8_t *addr)
{
    hp_link *l = hp_dp_link(dp, link);
    if (!l || l->role != HP_ROLE_ENV || env_lookup(dp, family, addr) >= 0)
        return -1;
    uint32_t i = env_hash(family, addr);
    for (unsigned k = 0; k < HP_DP_ENV_SLOTS; k++, i = (i + 1) & (HP_DP_ENV_SLOTS - 1)) {
        if (dp->env_slot[i])
            continue;
        memset(dp->env_key[i], 0, 16);
        memcpy(dp->env_key[i], addr, family == 4 ? 4 : 16);
        dp->env_slot[i] = ((link + 1) << 1) | (family == 6);
        if (family == 4) {
            memcpy(l->env4, addr, 4);
            l->has_env4 = 1;
        } else {
            memcpy(l->env6, addr, 16);
            l->has_env6 = 1;
        }
        return 0;
    }
    return -1;
}

int hp_dp_set_subnet(hp_dp *dp, int link, int family, const uint8_t *net, int plen,
                     const uint8_t *router)
{
    hp_link *l = hp_dp_link(dp, link);
    if (!l || (l->role != HP_ROLE_ENI && l->role != HP_ROLE_INSIDE) || plen < 0 ||
        plen > (family == 4 ? 32 : 128))
        return -1;
    if (family == 4) {
        memcpy(l->net4, net, 4);
        memcpy(l->router4, router, 4);
        l->plen4 = (uint8_t)plen;
        l->has_net4 = 1;
    } else {
        memcpy(l->net6, net, 16);
        memcpy(l->router6, router, 16);
        l->plen6 = (uint8_t)plen;
        l->has_net6 = 1;
    }
    return 0;
}

int hp_dp_watch(hp_dp *dp, int fd)
{
    if (dp->n_watch >= HP_DP_MAX_WATCH)
        return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = WATCH_TAG | dp->n_watch};
    if (epoll_ctl(dp->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -1;
    dp->watch_fd[dp->n_watch] = fd;
    return (int)dp->n_watch++;
}
