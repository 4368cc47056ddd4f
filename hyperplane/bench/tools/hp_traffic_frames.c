/* hp-traffic udp-send --link: whole Ethernet frames on a packet socket.
 *
 * A UDP socket's send path (route, neighbour, IP output) costs more than half of what a 64-byte
 * datagram costs its sender; on a veth the receiver's work lands on the sender's CPU as well.
 * With --link the datagrams are built once, checksums and all, and sent as whole frames on a
 * packet socket: the same bytes on the wire, at a fraction of the sender's cost, so the
 * generator can offer more than the forwarder under test can take. */
#include "hp_traffic.h"

#include <net/ethernet.h>
#include <net/if.h>
#include <sys/ioctl.h>

#define FRAME_MAX 1514 /* Ethernet header + the largest --size with its IP and UDP headers */

/* The Internet checksum (RFC 1071): a ones' complement sum of 16-bit words, folded. */
static uint32_t csum_add(uint32_t sum, const void *data, size_t len)
{
    const uint8_t *b = data;
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(b[i] << 8 | b[i + 1]);
    if (len & 1)
        sum += (uint32_t)(b[len - 1] << 8);
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void parse_mac(const char *s, uint8_t mac[6])
{
    unsigned v[6];
    char tail;
    if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
               &tail) != 6)
        usage_error("option --next-hop-mac: '%s' is not a MAC address (aa:bb:cc:dd:ee:ff)", s);
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)v[i];
}

/* The frame a connected UDP socket `fd` would send to `dst`: Ethernet (src = the link's MAC,
 * dst = the next hop's), IPv4 (DF, TTL 64, header checksum) or IPv6 (hop limit 64), UDP with
 * its checksum (mandatory over IPv6). Returns the frame's length. */
static size_t build_frame(uint8_t *out, int fd, const struct addr *dst, const uint8_t src_mac[6],
                          const uint8_t dst_mac[6], const char *payload, int size)
{
    struct sockaddr_storage la;
    socklen_t lal = sizeof la;
    if (getsockname(fd, (struct sockaddr *)&la, &lal) < 0)
        sys_error("getsockname");
    memcpy(out, dst_mac, 6);
    memcpy(out + 6, src_mac, 6);
    uint8_t *ip = out + 14, *udp;
    uint16_t ulen = (uint16_t)(8 + size), sport, dport;
    uint32_t sum;
    if (dst->family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)&la, *d6 = (const void *)&dst->ss;
        out[12] = 0x86, out[13] = 0xdd;
        memset(ip, 0, 40);
        ip[0] = 0x60;
        ip[4] = (uint8_t)(ulen >> 8), ip[5] = (uint8_t)ulen;
        ip[6] = IPPROTO_UDP, ip[7] = 64;
        memcpy(ip + 8, &s6->sin6_addr, 16);
        memcpy(ip + 24, &d6->sin6_addr, 16);
        udp = ip + 40;
        sport = s6->sin6_port, dport = d6->sin6_port;
        sum = csum_add(0, ip + 8, 32) + ulen + IPPROTO_UDP;
    } else {
        const struct sockaddr_in *s4 = (const void *)&la, *d4 = (const void *)&dst->ss;
        uint16_t tot = (uint16_t)(20 + ulen);
        out[12] = 0x08, out[13] = 0x00;
        memset(ip, 0, 20);
        ip[0] = 0x45;
        ip[2] = (uint8_t)(tot >> 8), ip[3] = (uint8_t)tot;
        ip[6] = 0x40; /* DF: an atomic datagram, its ID may stay 0 (RFC 6864) */
        ip[8] = 64, ip[9] = IPPROTO_UDP;
        memcpy(ip + 12, &s4->sin_addr, 4);
        memcpy(ip + 16, &d4->sin_addr, 4);
        uint16_t hc = csum_fold(csum_add(0, ip, 20));
        ip[10] = (uint8_t)(hc >> 8), ip[11] = (uint8_t)hc;
        udp = ip + 20;
        sport = s4->sin_port, dport = d4->sin_port;
        sum = csum_add(0, ip + 12, 8) + ulen + IPPROTO_UDP;
    }
    memcpy(udp, &sport, 2);
    memcpy(udp + 2, &dport, 2);
    udp[4] = (uint8_t)(ulen >> 8), udp[5] = (uint8_t)ulen;
    udp[6] = udp[7] = 0;
    memcpy(udp + 8, payload, (size_t)size);
    uint16_t uc = csum_fold(csum_add(sum, udp, ulen));
    if (uc == 0)
        uc = 0xffff; /* 0 means "no checksum" */
    udp[6] = (uint8_t)(uc >> 8), udp[7] = (uint8_t)uc;
    return (size_t)(udp + 8 + size - out);
}

/* Flow f's frame carries the source address and port its UDP socket fds[f] was given. */
void link_sender_open(struct link_sender *ls, const char *link, const char *nh_mac,
                      const struct addr *dst, const int *fds, int nflows, const char *payload,
                      int size)
{
    uint8_t src_mac[6], dst_mac[6];
    parse_mac(nh_mac, dst_mac);
    ls->fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: this socket receives nothing */
    if (ls->fd < 0)
        sys_error("socket(AF_PACKET) for --link %s (needs CAP_NET_RAW)", link);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if (strlen(link) >= sizeof ifr.ifr_name)
        usage_error("option --link: '%s' is too long for an interface name", link);
    strcpy(ifr.ifr_name, link);
    if (ioctl(ls->fd, SIOCGIFHWADDR, &ifr) < 0)
        sys_error("--link %s: no such interface here (SIOCGIFHWADDR)", link);
    memcpy(src_mac, ifr.ifr_hwaddr.sa_data, 6);
    memset(&ls->sll, 0, sizeof ls->sll);
    ls->sll.sll_family = AF_PACKET;
    ls->sll.sll_ifindex = (int)if_nametoindex(link);
    ls->sll.sll_protocol = htons(dst->family == AF_INET6 ? ETH_P_IPV6 : ETH_P_IP);
    int one = 1;
    setsockopt(ls->fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one); /* best effort */
    int sndbuf = 4 << 20;
    if (setsockopt(ls->fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0)
        setsockopt(ls->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    ls->frames = malloc((size_t)nflows * FRAME_MAX);
    ls->iov = calloc((size_t)nflows, sizeof *ls->iov);
    if (!ls->frames || !ls->iov)
        sys_error("malloc");
    for (int f = 0; f < nflows; f++) {
        uint8_t *frame = ls->frames + (size_t)f * FRAME_MAX;
        ls->iov[f].iov_base = frame;
        ls->iov[f].iov_len = build_frame(frame, fds[f], dst, src_mac, dst_mac, payload, size);
    }
}

void link_sender_close(struct link_sender *ls)
{
    if (ls->fd >= 0)
        close(ls->fd);
    free(ls->frames);
    free(ls->iov);
}
