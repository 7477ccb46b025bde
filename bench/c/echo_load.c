/* echo_load.c: the one load client of the echo benchmark.  Opens N TCP
 * connections to HOST:PORT (127.0.0.1 only in practice); on each, keeps
 * exactly one SIZE-byte message in flight: send it, wait for all SIZE bytes
 * of the echo, send the next.  Runs for DURATION seconds (a bounded loop),
 * then prints one line: "messages=M seconds=S msgs_per_s=R errors=E".  An
 * echo that differs from what was sent counts as an error (and drops the
 * connection), so a wrong server cannot post a good number.
 * Usage: echo_load HOST PORT CONNS DURATION_S [SIZE] */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn { int fd; size_t got; char *buf; };

static double now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int send_msg(int fd, const char *msg, size_t size) {
    size_t off = 0;
    while (off < size) {   /* SIZE is small: the socket buffer always takes it */
        ssize_t w = write(fd, msg + off, size - off);
        if (w < 0) { if (errno == EINTR || errno == EAGAIN) continue; return -1; }
        off += (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: %s HOST PORT CONNS DURATION_S [SIZE]\n", argv[0]); return 2; }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconn = atoi(argv[3]);
    double duration = atof(argv[4]);
    size_t size = argc > 5 ? (size_t)atol(argv[5]) : 64;
    if (nconn <= 0 || size == 0 || size > 65536 || duration <= 0) { fprintf(stderr, "bad arguments\n"); return 2; }
    char *msg = malloc(size);
    for (size_t i = 0; i < size; i++) msg[i] = (char)('a' + i % 26);
    struct conn *cs = calloc((size_t)nconn, sizeof *cs);
    int ep = epoll_create1(0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(stderr, "bad host\n"); return 2; }
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        cs[i].fd = fd;
        cs[i].buf = malloc(size);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    unsigned long long messages = 0, errors = 0;
    int alive = nconn;
    double t0 = now(), end = t0 + duration, t = t0;
    for (int i = 0; i < nconn; i++)
        if (send_msg(cs[i].fd, msg, size) < 0) { errors++; alive--; close(cs[i].fd); cs[i].fd = -1; }
    struct epoll_event evs[256];
    while (alive > 0 && (t = now()) < end) {
        int ms = (int)((end - t) * 1000) + 1;
        int n = epoll_wait(ep, evs, 256, ms > 100 ? 100 : ms);
        if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
        for (int k = 0; k < n; k++) {
            struct conn *c = &cs[evs[k].data.u32];
            if (c->fd < 0) continue;
            ssize_t r = read(c->fd, c->buf + c->got, size - c->got);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            c->got += r > 0 ? (size_t)r : 0;
            if (r <= 0 || (c->got == size && memcmp(c->buf, msg, size) != 0)) {   /* EOF, error, wrong echo */
                errors++; alive--; epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->fd = -1; continue;
            }
            if (c->got == size) {
                c->got = 0; messages++;
                if (send_msg(c->fd, msg, size) < 0) { errors++; alive--; close(c->fd); c->fd = -1; }
            }
        }
    }
    double secs = now() - t0;
    printf("messages=%llu seconds=%.3f msgs_per_s=%.0f errors=%llu\n", messages, secs, messages / secs, errors);
    return alive > 0 ? 0 : 1;
}
