/* echo_server.c: the limit for the echo benchmark.  A single-threaded,
 * level-triggered epoll echo server: non-blocking sockets, read up to 64 KiB,
 * write it back, buffer what the kernel would not take.  Never used for
 * anything but 127.0.0.1 benchmarking.
 * Usage: echo_server PORT [HOST]   (prints "ready" once listening) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536
struct pend { char *buf; size_t len, off; };
static struct pend pending[MAXFD];
static char rbuf[65536];

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    free(pending[fd].buf);
    memset(&pending[fd], 0, sizeof pending[fd]);
    close(fd);
}

/* Write what is pending on fd; returns 0 when drained, 1 if still pending, -1 on error. */
static int flush_pending(int ep, int fd) {
    struct pend *p = &pending[fd];
    while (p->off < p->len) {
        ssize_t n = write(fd, p->buf + p->off, p->len - p->off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
            if (errno == EINTR) continue;
            return -1;
        }
        p->off += (size_t)n;
    }
    p->len = p->off = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s PORT [HOST]\n", argv[0]); return 2; }
    int port = atoi(argv[1]);
    const char *host = argc > 2 ? argv[2] : "127.0.0.1";
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 1024) < 0) { perror("bind/listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("ready\n"); fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    if (c >= MAXFD) { close(c); continue; }
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                if (flush_pending(ep, fd) < 0) { drop(ep, fd); continue; }
                if (pending[fd].len) continue;
            }
            if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (pending[fd].len) continue;   /* back-pressure: finish writing first */
            ssize_t r = read(fd, rbuf, sizeof rbuf);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { drop(ep, fd); continue; }
            if (r < 0) continue;
            ssize_t off = 0;
            while (off < r) {
                ssize_t w = write(fd, rbuf + off, (size_t)(r - off));
                if (w < 0) {
                    if (errno == EINTR) continue;
                    if (errno != EAGAIN && errno != EWOULDBLOCK) { off = -1; break; }
                    struct pend *p = &pending[fd];
                    p->buf = realloc(p->buf, (size_t)(r - off));
                    memcpy(p->buf, rbuf + off, (size_t)(r - off));
                    p->len = (size_t)(r - off); p->off = 0;
                    struct epoll_event oev = {.events = EPOLLOUT, .data.fd = fd};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &oev);
                    break;
                }
                off += w;
            }
            if (off < 0) drop(ep, fd);
        }
    }
}
