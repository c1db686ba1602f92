/* delayproxy - a TCP relay on 127.0.0.1 that adds network latency, for
 * scripts/bench-remote.py: this kernel has no netem (docs/PERFORMANCE.md,
 * "Remote bundles"), so the round trip of the emulated link is made here
 * and its bandwidth by an htb qdisc on lo that matches this relay's port.
 *
 *     delayproxy LISTEN_PORT UPSTREAM_PORT RTT_US
 *
 * Every byte is held RTT_US/2 in each direction (a request reaches the
 * server half a round trip after it was sent, its answer comes back half a
 * round trip later), and a new connection's first bytes wait one more
 * round trip as a TCP handshake would. Each direction has a reader that
 * stamps what arrives and a writer that sends it when its time comes,
 * through a 1 MiB ring (more than a 500 MB/s link carries in a 1 ms round
 * trip); a full ring stalls the reader, and TCP then slows the sender, as
 * a real link's queue would. (splice() through a pipe would save the two
 * copies, but a splice from a pipe into a TCP socket blocked here until
 * the peer closed.)
 *
 * Prints "ready PORT" on stdout once it listens (LISTEN_PORT 0: a free
 * port); runs until killed. Errors on one connection close that one. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RING 4096           /* stamped arrivals in flight per direction */
#define BUF (1u << 20)   /* bytes in flight per direction */

struct arrival {
    uint64_t at_ns;         /* when it was read */
    uint32_t len;           /* 0: end of stream */
};

struct dir {
    int src, dst;
    char *buf;
    uint64_t wr, rd;        /* bytes put in buf, taken out; guarded by mu */
    uint64_t start_ns;      /* nothing leaves before this (the handshake) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct arrival ring[RING];
    unsigned head, tail;    /* guarded by mu */
    struct conn *conn;
};

struct conn {
    struct dir d[2];        /* 0: client -> server, 1: server -> client */
    int client, server;
    atomic_int refs;        /* threads still running; the last frees */
};

static uint64_t one_way_ns;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000u),
                          .tv_nsec = (long)(t % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void conn_put(struct conn *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    for (int i = 0; i < 2; i++) {
        free(c->d[i].buf);
        pthread_mutex_destroy(&c->d[i].mu);
        pthread_cond_destroy(&c->d[i].cv);
    }
    close(c->client);
    close(c->server);
    free(c);
}

static void push(struct dir *d, uint64_t at, uint32_t len)
{
    pthread_mutex_lock(&d->mu);
    while (d->tail - d->head == RING)
        pthread_cond_wait(&d->cv, &d->mu);
    d->ring[d->tail % RING] = (struct arrival){at, len};
    d->tail++;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static struct arrival pop(struct dir *d)
{
    pthread_mutex_lock(&d->mu);
    while (d->tail == d->head)
        pthread_cond_wait(&d->cv, &d->mu);
    struct arrival a = d->ring[d->head % RING];
    d->head++;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    return a;
}

static void *reader(void *arg)
{
    struct dir *d = arg;
    for (;;) {
        pthread_mutex_lock(&d->mu);
        while (d->wr - d->rd == BUF)
            pthread_cond_wait(&d->cv, &d->mu);
        size_t off = (size_t)(d->wr % BUF);
        size_t room = BUF - (size_t)(d->wr - d->rd);
        if (room > BUF - off)
            room = BUF - off;
        pthread_mutex_unlock(&d->mu);
        /* only this thread writes buf[wr..]: the writer reads below wr */
        ssize_t n = read(d->src, d->buf + off, room);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            push(d, now_ns(), 0);
            break;
        }
        pthread_mutex_lock(&d->mu);
        d->wr += (uint64_t)n;
        pthread_mutex_unlock(&d->mu);
        push(d, now_ns(), (uint32_t)n);
    }
    conn_put(d->conn);
    return NULL;
}

static void consumed(struct dir *d, uint32_t len)
{
    pthread_mutex_lock(&d->mu);
    d->rd += len;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void *writer(void *arg)
{
    struct dir *d = arg;
    int broken = 0;
    uint64_t rd = 0;        /* this thread's copy of d->rd */
    for (;;) {
        struct arrival a = pop(d);
        if (a.len == 0)
            break;
        if (!broken) {
            uint64_t due = a.at_ns + one_way_ns;
            sleep_until(due > d->start_ns ? due : d->start_ns);
        }
        uint32_t left = a.len;
        while (left > 0 && !broken) {
            size_t off = (size_t)(rd % BUF), len = left;
            if (len > BUF - off)
                len = BUF - off;
            ssize_t n = write(d->dst, d->buf + off, len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                /* the other end is gone: wake every reader of this
                 * connection, which then ends its stream; what is still
                 * in flight is dropped */
                broken = 1;
                shutdown(d->conn->client, SHUT_RDWR);
                shutdown(d->conn->server, SHUT_RDWR);
                break;
            }
            left -= (uint32_t)n;
            rd += (uint64_t)n;
            consumed(d, (uint32_t)n);
        }
        if (left > 0) {     /* broken: give the reader its room back */
            rd += left;
            consumed(d, left);
        }
    }
    if (!broken)
        shutdown(d->dst, SHUT_WR);
    conn_put(d->conn);
    return NULL;
}

static int connect_upstream(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void start_conn(int client, int upstream_port)
{
    uint64_t accepted = now_ns();
    int one = 1;
    int server = connect_upstream(upstream_port);
    if (server < 0) {
        perror("delayproxy: connect upstream");
        close(client);
        return;
    }
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        goto fail;
    c->client = client;
    c->server = server;
    atomic_init(&c->refs, 4);
    for (int i = 0; i < 2; i++) {
        struct dir *d = &c->d[i];
        d->conn = c;
        d->src = i == 0 ? client : server;
        d->dst = i == 0 ? server : client;
        /* the handshake's round trip, before the first request goes */
        d->start_ns = i == 0 ? accepted + 2 * one_way_ns : 0;
        pthread_mutex_init(&d->mu, NULL);
        pthread_cond_init(&d->cv, NULL);
        d->buf = malloc(BUF);
        if (!d->buf) {
            perror("delayproxy: malloc");
            exit(1);    /* the benchmark cannot go on */
        }
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (int i = 0; i < 2; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, reader, &c->d[i]) != 0 ||
            pthread_create(&t, &attr, writer, &c->d[i]) != 0) {
            perror("delayproxy: pthread_create");
            exit(1);
        }
    }
    pthread_attr_destroy(&attr);
    return;
fail:
    close(client);
    close(server);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: delayproxy LISTEN_PORT UPSTREAM_PORT RTT_US\n");
        return 2;
    }
    int port = atoi(argv[1]), upstream = atoi(argv[2]);
    one_way_ns = (uint64_t)strtoull(argv[3], NULL, 10) * 1000u / 2;
    signal(SIGPIPE, SIG_IGN);
    /* sleeps end within microseconds of their time, not the default 50 */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 128) < 0 ||
        getsockname(ls, (struct sockaddr *)&sa, &sl) < 0) {
        perror("delayproxy: listen");
        return 1;
    }
    printf("ready %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    for (;;) {
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            perror("delayproxy: accept");
            return 1;
        }
        start_conn(fd, upstream);
    }
}
