/*
 * capacity_client: many mostly idle keep-alive clients, for the capacity benchmark
 * (loadtests/capacity.py compiles it with the machine's cc at run time).
 *
 * N clients each open one TCP connection and keep it for the whole run. Every
 * INTERVAL seconds each client sends one line of SIZE bytes (the last one '\n') and
 * expects the same line back. Clients are spread evenly over the interval, so the
 * server sees a steady N / INTERVAL requests per second. One thread, epoll, level
 * triggered; the fd limit is raised to the hard limit first.
 *
 * Timeline: connections open over RAMP seconds (connect failures are retried every
 * 0.5 s until the window opens); sending starts when the ramp ends; the measured
 * window opens one interval later ("start" is printed on stdout) and lasts -d
 * seconds. Only requests sent inside the window count. After it, replies still
 * outstanding get up to -T seconds. A client "got every reply" when it sent at least
 * one request in the window, got a reply to each, never had its previous request
 * still unanswered when its next one was due, and lost no connection. A request not
 * answered within -T seconds is a timeout: that connection is closed for good.
 *
 * Output (stdout): "start", then one line of JSON at the end of the window. With -H
 * the connections stay open until standard input reaches EOF, so the caller can read
 * the server's figures before the teardown.
 *
 * Usage: capacity_client -p PORT [-a ADDR] [-c CLIENTS] [-d SECONDS] [-i INTERVAL]
 *                        [-s SIZE] [-r RAMP] [-T TIMEOUT] [-H]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HIST_FINE 100000u   /* 1 us buckets: 0 .. 100 ms */
#define HIST_COARSE 100000u /* 1 ms buckets: 100 ms .. 100 s */
#define HIST_N (HIST_FINE + HIST_COARSE)
#define MAX_EVENTS 1024
#define RETRY_NS 500000000ull

enum { C_NEW, C_CONNECTING, C_OPEN, C_RETRY, C_DEAD };

typedef struct {
    int fd;
    int state;
    int outstanding;     /* a request is waiting for its reply */
    int failed;          /* lost in the window: timeout, I/O error, missed tick */
    uint32_t got;        /* bytes of the current reply read so far */
    uint64_t t_sent;     /* ns */
    uint64_t retry_at;   /* ns */
    uint32_t sent;       /* requests sent in the window */
    uint32_t replies;    /* of those, answered */
} client_t;

static struct {
    struct sockaddr_in addr;
    int n;
    double duration, interval, ramp, timeout;
    size_t size;
    int hold;
} cfg = {.n = 256, .duration = 20, .interval = 1, .ramp = -1, .timeout = 5, .size = 32};

static client_t *clients;
static uint32_t *hist;
static int epfd;
static char *line;
static uint64_t t_window, t_end;
static uint64_t stat_replies, stat_timeouts, stat_io_errors, stat_connect_errors,
    stat_missed, stat_bad, lat_sum_us, lat_max_us, open_now, open_peak;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int in_window(uint64_t t) { return t >= t_window && t < t_end; }

static void hist_add(uint64_t ns) {
    uint64_t us = ns / 1000u, idx;
    if (us < HIST_FINE) idx = us;
    else {
        idx = HIST_FINE + (us - HIST_FINE) / 1000u;
        if (idx >= HIST_N) idx = HIST_N - 1;
    }
    hist[idx]++;
    lat_sum_us += us;
    if (us > lat_max_us) lat_max_us = us;
}

static double percentile(double pct) {
    if (!stat_replies) return 0.0;
    uint64_t rank = (uint64_t)(pct / 100.0 * (double)stat_replies), seen = 0;
    if (rank >= stat_replies) rank = stat_replies - 1;
    for (uint64_t i = 0; i < HIST_N; i++) {
        seen += hist[i];
        if (seen > rank)
            return i < HIST_FINE ? (double)i + 0.5
                                 : (double)HIST_FINE + (double)(i - HIST_FINE) * 1000.0 + 500.0;
    }
    return 0.0;
}

static void drop(client_t *c) {
    if (c->fd >= 0) {
        close(c->fd);
        open_now--;
    }
    c->fd = -1;
    c->state = C_DEAD;
    c->outstanding = 0;
}

static void fail(client_t *c, uint64_t now, uint64_t *counter) {
    if (now < t_window) {  /* before the window: try again with a new connection */
        if (c->fd >= 0) { close(c->fd); open_now--; }
        c->fd = -1;
        c->outstanding = 0;
        c->state = C_RETRY;
        c->retry_at = now + RETRY_NS;
        return;
    }
    (*counter)++;
    c->failed = 1;
    drop(c);
}

static void open_conn(client_t *c, uint64_t now) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail(c, now, &stat_connect_errors);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    open_now++;
    if (open_now > open_peak) open_peak = open_now;
    c->got = 0;
    c->outstanding = 0;
    int rc = connect(fd, (struct sockaddr *)&cfg.addr, sizeof cfg.addr);
    if (rc < 0 && errno != EINPROGRESS) {
        fail(c, now, &stat_connect_errors);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    c->state = C_CONNECTING;
}

static void send_line(client_t *c, uint64_t now) {
    if (c->state != C_OPEN) {
        if (in_window(now) && c->state != C_DEAD) c->failed = 1;  /* not connected */
        return;
    }
    if (c->outstanding) {  /* the previous reply is late: this tick is missed */
        if (in_window(now)) {
            stat_missed++;
            c->failed = 1;
        }
        return;
    }
    ssize_t n = send(c->fd, line, cfg.size, MSG_NOSIGNAL);
    if (n != (ssize_t)cfg.size) {
        fail(c, now, &stat_io_errors);
        return;
    }
    c->outstanding = 1;
    c->got = 0;
    c->t_sent = now;
    if (in_window(now)) c->sent++;
}

static void on_readable(client_t *c) {
    char buf[4096];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        uint64_t now = now_ns();
        if (n == 0) {
            fail(c, now, &stat_io_errors);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            fail(c, now, &stat_io_errors);
            return;
        }
        for (ssize_t i = 0; i < n; i++) {
            c->got++;
            if (buf[i] != '\n') continue;
            if (!c->outstanding || c->got != cfg.size) {
                stat_bad++;
                if (in_window(now)) c->failed = 1;
            } else if (in_window(c->t_sent)) {
                c->replies++;
                stat_replies++;
                hist_add(now - c->t_sent);
            }
            c->outstanding = 0;
            c->got = 0;
        }
        if (n < (ssize_t)sizeof buf) return;
    }
}

static void on_event(client_t *c, uint32_t events) {
    uint64_t now = now_ns();
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            fail(c, now, &stat_connect_errors);
            return;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
        c->state = C_OPEN;
        return;
    }
    if (c->state == C_OPEN) on_readable(c);
}

static double tv_s(struct timeval tv) { return (double)tv.tv_sec + tv.tv_usec / 1e6; }

int main(int argc, char **argv) {
    int port = 0, opt;
    const char *host = "127.0.0.1";
    while ((opt = getopt(argc, argv, "p:a:c:d:i:s:r:T:H")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'a': host = optarg; break;
        case 'c': cfg.n = atoi(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'i': cfg.interval = atof(optarg); break;
        case 's': cfg.size = (size_t)atol(optarg); break;
        case 'r': cfg.ramp = atof(optarg); break;
        case 'T': cfg.timeout = atof(optarg); break;
        case 'H': cfg.hold = 1; break;
        default:
            fprintf(stderr, "usage: capacity_client -p PORT [-a ADDR] [-c N] [-d S] [-i S] "
                            "[-s SIZE] [-r RAMP] [-T S] [-H]\n");
            return 2;
        }
    }
    if (port <= 0 || cfg.n <= 0 || cfg.size < 2 || cfg.interval <= 0 || cfg.duration <= 0) {
        fprintf(stderr, "capacity_client: bad arguments\n");
        return 2;
    }
    if (cfg.ramp < 0) cfg.ramp = cfg.n / 5000.0 > 1.0 ? cfg.n / 5000.0 : 1.0;
    memset(&cfg.addr, 0, sizeof cfg.addr);
    cfg.addr.sin_family = AF_INET;
    cfg.addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &cfg.addr.sin_addr) != 1) die("inet_pton");

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)cfg.n + 16 > rl.rlim_cur) {
        fprintf(stderr, "capacity_client: %d clients need more fds than the limit %llu\n",
                cfg.n, (unsigned long long)rl.rlim_cur);
        return 2;
    }

    line = malloc(cfg.size);
    memset(line, 'x', cfg.size - 1);
    line[cfg.size - 1] = '\n';
    clients = calloc((size_t)cfg.n, sizeof *clients);
    hist = calloc(HIST_N, sizeof *hist);
    if (!line || !clients || !hist) die("calloc");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    for (int i = 0; i < cfg.n; i++) { clients[i].fd = -1; clients[i].state = C_NEW; }

    uint64_t t0 = now_ns();
    uint64_t ramp_ns = (uint64_t)(cfg.ramp * 1e9), interval_ns = (uint64_t)(cfg.interval * 1e9);
    uint64_t t_send0 = t0 + ramp_ns;
    t_window = t_send0 + interval_ns;
    t_end = t_window + (uint64_t)(cfg.duration * 1e9);
    uint64_t t_stop = t_end + (uint64_t)(cfg.timeout * 1e9);
    double step = (double)interval_ns / cfg.n;   /* ns between two clients' sends */
    uint64_t next_open = 0, next_send = 0;       /* indices: connects, sends */
    int started = 0;
    struct epoll_event events[MAX_EVENTS];
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);

    for (;;) {
        uint64_t now = now_ns();
        if (!started && now >= t_window) {
            printf("start\n");
            fflush(stdout);
            started = 1;
        }
        /* the ramp: client k opens at t0 + k * ramp / n */
        while (next_open < (uint64_t)cfg.n &&
               t0 + (uint64_t)((double)ramp_ns * next_open / cfg.n) <= now)
            open_conn(&clients[next_open++], now);
        /* retries of failed connects, before the window only */
        if (now < t_window) {
            for (int i = 0; i < cfg.n && i < (int)next_open; i++)
                if (clients[i].state == C_RETRY && clients[i].retry_at <= now)
                    open_conn(&clients[i], now);
        }
        /* sends: the k-th send overall is client k % n's, due at t_send0 + k * step */
        while (now < t_end && t_send0 + (uint64_t)(step * (double)next_send) <= now) {
            send_line(&clients[next_send % (uint64_t)cfg.n], now);
            next_send++;
        }
        /* timeouts: a scan of every client, ten times a second (0.1 s granularity) */
        static uint64_t last_scan;
        if (now - last_scan > 100000000ull) {
            last_scan = now;
            uint64_t limit = (uint64_t)(cfg.timeout * 1e9);
            for (int i = 0; i < cfg.n; i++) {
                client_t *c = &clients[i];
                if (c->state == C_OPEN && c->outstanding && now - c->t_sent > limit)
                    fail(c, now, &stat_timeouts);
            }
        }
        if (now >= t_end) {
            int pending = 0;
            for (int i = 0; i < cfg.n; i++)
                if (clients[i].state == C_OPEN && clients[i].outstanding &&
                    in_window(clients[i].t_sent))
                    pending = 1;
            if (!pending || now >= t_stop) break;
        }
        uint64_t wake = t_stop;
        if (now < t_end) {
            uint64_t due = t_send0 + (uint64_t)(step * (double)next_send);
            if (due < wake) wake = due;
        }
        if (next_open < (uint64_t)cfg.n) {  /* the next connect of the ramp */
            uint64_t due = t0 + (uint64_t)((double)ramp_ns * next_open / cfg.n);
            if (due < wake) wake = due;
        }
        int timeout_ms = wake > now ? (int)((wake - now + 999999) / 1000000) : 0;
        if (timeout_ms > 10) timeout_ms = 10;
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
    }

    uint64_t all = 0, any = 0, connected = 0, pending = 0;
    for (int i = 0; i < cfg.n; i++) {
        client_t *c = &clients[i];
        if (c->state == C_OPEN) connected++;
        if (c->outstanding && in_window(c->t_sent)) { pending++; c->failed = 1; }
        if (c->replies) any++;
        if (!c->failed && c->sent > 0 && c->replies == c->sent && c->state == C_OPEN) all++;
    }
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = tv_s(ru1.ru_utime) + tv_s(ru1.ru_stime) - tv_s(ru0.ru_utime) - tv_s(ru0.ru_stime);
    double elapsed = (double)(now_ns() - t0) / 1e9;
    printf("{\"clients\": %d, \"clients_all_replies\": %" PRIu64 ", \"clients_any_reply\": %"
           PRIu64 ", \"connected\": %" PRIu64 ", \"open_peak\": %" PRIu64 ", \"replies\": %"
           PRIu64 ", \"rps\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %" PRIu64
           ", \"mean_us\": %.1f, \"timeouts\": %" PRIu64 ", \"missed\": %" PRIu64
           ", \"unanswered\": %" PRIu64 ", \"io_errors\": %" PRIu64 ", \"connect_errors\": %"
           PRIu64 ", \"bad_replies\": %" PRIu64 ", \"window_s\": %.3f, \"cpu_s\": %.3f"
           ", \"elapsed\": %.3f}\n",
           cfg.n, all, any, connected, open_peak, stat_replies,
           stat_replies / cfg.duration, percentile(50), percentile(99), lat_max_us,
           stat_replies ? (double)lat_sum_us / stat_replies : 0.0, stat_timeouts, stat_missed,
           pending, stat_io_errors, stat_connect_errors, stat_bad, cfg.duration, cpu, elapsed);
    fflush(stdout);
    if (cfg.hold) {
        char sink[256];
        while (read(0, sink, sizeof sink) > 0) {}
    }
    for (int i = 0; i < cfg.n; i++)
        if (clients[i].fd >= 0) close(clients[i].fd);
    return 0;
}
