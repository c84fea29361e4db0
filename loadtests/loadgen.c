/*
 * loadgen: a small, fast raw-TCP load generator for the engine benchmark
 * (loadtests/bench.py compiles it with the machine's cc at bench time).
 *
 * Protocol: the client sends one request line (SIZE bytes, the last one '\n') and
 * reads one reply line (up to '\n'). Modes:
 *
 *   keepalive  each client keeps one connection and sends request after request
 *   close      each client opens a connection per request: connect, send, read the
 *              reply line, close (latency then includes the connect)
 *
 * With -P the protocol is HTTP/1.1 instead: "GET / HTTP/1.1" (plus "Connection:
 * close" in close mode), and a reply is a whole response (headers, then as many body
 * bytes as Content-Length says; a status other than 200 counts as a bad reply). A
 * server that closes a keep-alive connection after a response (gunicorn's sync
 * worker, an HTTP/1.0 server) is counted in "server_closes", not as an error, and
 * the client reconnects.
 *
 * Each client is a slot; a slot keeps its identity across reconnects, so the report
 * can say how many clients got at least one reply during the measured window.
 *
 * Bounds: a warm-up (-w), then a measured window of -d seconds that also ends when
 * -n replies have been counted. Requests older than -T seconds count as timeouts
 * (the connection is closed and reopened). Only replies received inside the window
 * count; latencies go into a histogram (1 us buckets up to 100 ms, then 1 ms ones).
 *
 * Output (stdout): the line "start" when the measured window opens, then one line of
 * JSON with the results when it closes. With -H the connections stay open until
 * standard input reaches EOF, so the caller can read the server's CPU time before
 * the connections' teardown adds to it.
 *
 * It is also a trivial reference server, to measure the generator's own ceiling:
 *   loadgen -L PORT          line echo server (one thread, epoll)
 *   loadgen -L PORT -P       minimal HTTP/1.1 server (keep-alive, honours
 *                            "Connection: close"), for wrk's ceiling
 *
 * Usage: loadgen -p PORT [-a ADDR] [-c CLIENTS] [-m keepalive|close] [-d SECONDS]
 *                [-w SECONDS] [-n MAX_REPLIES] [-s SIZE] [-T SECONDS] [-t THREADS] [-H] [-P]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
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
#define MAX_EVENTS 256
#define RETRY_DELAY_NS 10000000ull /* after a failed connect */
#define SCAN_EVERY_NS 20000000ull  /* timeout scan period */
#define HTTP_BUF 8192              /* a whole HTTP response must fit */

enum state { S_IDLE, S_WAIT_RETRY, S_CONNECTING, S_SENDING, S_READING, S_DONE };

typedef struct {
    int fd;
    int state;
    int client;            /* global client index */
    size_t sent;           /* bytes of the request written */
    size_t got;            /* bytes of the reply read */
    char *buf;             /* HTTP: the response so far (NUL-terminated) */
    uint64_t t_start;      /* when the current request started (ns) */
    uint64_t retry_at;     /* S_WAIT_RETRY: when to reconnect */
    uint64_t responses;    /* replies counted in the window */
} conn_t;

typedef struct {
    int id;
    int nconns;
    conn_t *conns;
    int epfd;
    uint64_t max_replies;
    uint64_t replies;
    uint64_t timeouts;
    uint64_t connect_errors;
    uint64_t io_errors;
    uint64_t eof_errors;
    uint64_t bad_replies;
    uint64_t server_closes;
    uint64_t connects;
    uint64_t lat_max;
    uint64_t lat_sum;
    uint64_t finished_at;  /* ns: when this thread stopped counting */
    uint32_t *hist;
} worker_t;

static struct {
    struct sockaddr_in addr;
    int clients;
    int keepalive;
    double duration;
    double warmup;
    uint64_t max_replies;
    size_t size;
    double timeout;
    int threads;
    int hold;
    int http;
    uint64_t t_window;   /* ns: window opens */
    uint64_t t_end;      /* ns: window closes */
    char *request;
} cfg;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void hist_add(worker_t *w, uint64_t ns) {
    uint64_t us = ns / 1000u;
    uint64_t idx;
    if (us < HIST_FINE) {
        idx = us;
    } else {
        idx = HIST_FINE + (us - HIST_FINE) / 1000u;
        if (idx >= HIST_N) idx = HIST_N - 1;
    }
    w->hist[idx]++;
    w->lat_sum += us;
    if (us > w->lat_max) w->lat_max = us;
}

static double hist_bucket_us(uint64_t idx) {
    if (idx < HIST_FINE) return (double)idx + 0.5;
    return (double)HIST_FINE + (double)(idx - HIST_FINE) * 1000.0 + 500.0;
}

static double hist_percentile(const uint64_t *hist, uint64_t total, double pct) {
    if (total == 0) return 0.0;
    uint64_t rank = (uint64_t)(pct / 100.0 * (double)total);
    if (rank >= total) rank = total - 1;
    uint64_t seen = 0;
    for (uint64_t i = 0; i < HIST_N; i++) {
        seen += hist[i];
        if (seen > rank) return hist_bucket_us(i);
    }
    return hist_bucket_us(HIST_N - 1);
}

static int in_window(uint64_t t) { return t >= cfg.t_window && t < cfg.t_end; }

static void close_conn(worker_t *w, conn_t *c) {
    (void)w;
    if (c->fd >= 0) close(c->fd);  /* also removes it from the epoll set */
    c->fd = -1;
    c->state = S_IDLE;
}

static void send_request(worker_t *w, conn_t *c);

static void start_conn(worker_t *w, conn_t *c, uint64_t now) {
    c->sent = 0;
    c->got = 0;
    c->t_start = now;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (cfg.keepalive) { /* one write per connection otherwise: Nagle cannot delay it */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->fd = fd;
    w->connects++;
    int rc = connect(fd, (struct sockaddr *)&cfg.addr, sizeof cfg.addr);
    if (rc < 0 && errno != EINPROGRESS) {
        if (in_window(now)) w->connect_errors++;
        close_conn(w, c);
        c->state = S_WAIT_RETRY;
        c->retry_at = now + RETRY_DELAY_NS;
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP,
                             .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    if (rc == 0) {
        send_request(w, c);
    } else {
        c->state = S_CONNECTING;
    }
}

static int may_issue(worker_t *w, uint64_t now) {
    if (now >= cfg.t_end) return 0;
    return w->replies < w->max_replies;
}

static void fail_and_restart(worker_t *w, conn_t *c, uint64_t *counter, uint64_t now) {
    if (in_window(now)) (*counter)++;
    close_conn(w, c);
    if (may_issue(w, now)) start_conn(w, c, now);
    else c->state = S_DONE;
}

static void send_request(worker_t *w, conn_t *c) {
    c->state = S_SENDING;
    while (c->sent < cfg.size) {
        ssize_t n = send(c->fd, cfg.request + c->sent, cfg.size - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            return;  /* an EPOLLOUT edge will follow */
        } else {
            fail_and_restart(w, c, &w->io_errors, now_ns());
            return;
        }
    }
    c->state = S_READING;
}

static void got_reply(worker_t *w, conn_t *c, uint64_t now, int server_closes) {
    if (in_window(now)) {
        w->replies++;
        c->responses++;
        hist_add(w, now - c->t_start);
        if (server_closes && cfg.keepalive) w->server_closes++;
    }
    if (!cfg.keepalive || server_closes) {
        close_conn(w, c);
        if (may_issue(w, now)) start_conn(w, c, now);
        else c->state = S_DONE;
        return;
    }
    if (!may_issue(w, now)) {
        c->state = S_DONE;
        return;
    }
    c->sent = 0;
    c->got = 0;
    c->t_start = now;
    send_request(w, c);
}

/* HTTP: 1 when c->buf holds a whole response, 0 when more is needed, -1 when it is
 * malformed; *ok is whether the status is 200, *closes whether the server closes. */
static int http_response(conn_t *c, int *ok, int *closes) {
    char *end = strstr(c->buf, "\r\n\r\n");
    if (end == NULL) return c->got >= HTTP_BUF ? -1 : 0;
    size_t head = (size_t)(end - c->buf) + 4;
    size_t body = 0;
    char *cl = strcasestr(c->buf, "\r\ncontent-length:");
    if (cl != NULL && cl < end) body = strtoul(cl + 17, NULL, 10);
    if (c->got < head + body) return head + body > HTTP_BUF ? -1 : 0;
    *ok = strncmp(c->buf, "HTTP/1.", 7) == 0 && strncmp(c->buf + 8, " 200", 4) == 0;
    char *conn = strcasestr(c->buf, "\r\nconnection:");
    int says_close = conn != NULL && conn < end &&
                     strncasecmp(conn + 13, " close", 6) == 0;
    int says_keep = conn != NULL && conn < end &&
                    strncasecmp(conn + 13, " keep-alive", 11) == 0;
    int http10 = strncmp(c->buf, "HTTP/1.0", 8) == 0;
    *closes = says_close || (http10 && !says_keep);
    return 1;
}

static void read_reply(worker_t *w, conn_t *c) {
    char line_buf[4096];
    for (;;) {
        char *buf = cfg.http ? c->buf + c->got : line_buf;
        size_t room = cfg.http ? HTTP_BUF - c->got : sizeof line_buf;
        if (room == 0) {
            fail_and_restart(w, c, &w->bad_replies, now_ns());
            return;
        }
        ssize_t n = recv(c->fd, buf, room, 0);
        if (n > 0) {
            c->got += (size_t)n;
            if (cfg.http) {
                c->buf[c->got] = '\0';
                int ok = 0, closes = 0;
                int done = http_response(c, &ok, &closes);
                if (done == 0) continue;
                uint64_t now = now_ns();
                if (done < 0 || !ok) {
                    fail_and_restart(w, c, &w->bad_replies, now);
                    return;
                }
                got_reply(w, c, now, closes);
                return;
            }
            if (buf[n - 1] == '\n') {
                uint64_t now = now_ns();
                if (c->got != cfg.size) {
                    if (in_window(now)) w->bad_replies++;
                }
                got_reply(w, c, now, 0);
                return;
            }
            continue;
        }
        if (n == 0) {
            fail_and_restart(w, c, &w->eof_errors, now_ns());
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return;
        fail_and_restart(w, c, &w->io_errors, now_ns());
        return;
    }
}

static void on_event(worker_t *w, conn_t *c, uint32_t events) {
    if (c->state == S_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = 0;
        if (events & (EPOLLERR | EPOLLHUP)) { /* else connected: skip the syscall */
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err == 0) err = ECONNRESET;
        }
        if (err != 0) {
            uint64_t now = now_ns();
            if (in_window(now)) w->connect_errors++;
            close_conn(w, c);
            c->state = S_WAIT_RETRY;
            c->retry_at = now + RETRY_DELAY_NS;
            return;
        }
        send_request(w, c);
        if (c->state != S_READING) return;
    } else if (c->state == S_SENDING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) send_request(w, c);
        if (c->state != S_READING) return;
    }
    if (c->state == S_READING && (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))) {
        read_reply(w, c);
    }
}

static void scan(worker_t *w, uint64_t now) {
    uint64_t limit = (uint64_t)(cfg.timeout * 1e9);
    for (int i = 0; i < w->nconns; i++) {
        conn_t *c = &w->conns[i];
        if (c->state == S_WAIT_RETRY) {
            if (now >= c->retry_at) {
                if (may_issue(w, now)) start_conn(w, c, now);
                else c->state = S_DONE;
            }
        } else if (c->state == S_CONNECTING || c->state == S_SENDING ||
                   c->state == S_READING) {
            if (now - c->t_start > limit) fail_and_restart(w, c, &w->timeouts, now);
        }
    }
}

static int busy(worker_t *w) {
    for (int i = 0; i < w->nconns; i++) {
        int s = w->conns[i].state;
        if (s == S_CONNECTING || s == S_SENDING || s == S_READING || s == S_WAIT_RETRY)
            return 1;
    }
    return 0;
}

static void *run_worker(void *arg) {
    worker_t *w = arg;
    struct epoll_event events[MAX_EVENTS];
    uint64_t now = now_ns();
    for (int i = 0; i < w->nconns; i++) start_conn(w, &w->conns[i], now);
    uint64_t next_scan = now + SCAN_EVERY_NS;
    for (;;) {
        now = now_ns();
        if (now >= cfg.t_end) break;
        if (w->replies >= w->max_replies && !busy(w)) break;
        if (now >= next_scan) {
            scan(w, now);
            next_scan = now + SCAN_EVERY_NS;
        }
        uint64_t wait_ns = next_scan - now;
        if (cfg.t_end - now < wait_ns) wait_ns = cfg.t_end - now;
        int timeout_ms = (int)(wait_ns / 1000000u) + 1;
        int n = epoll_wait(w->epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) on_event(w, events[i].data.ptr, events[i].events);
        if (w->replies >= w->max_replies) {
            /* the bound is reached: nothing new is issued; finish when idle */
            for (int i = 0; i < w->nconns; i++) {
                conn_t *c = &w->conns[i];
                if (c->state == S_WAIT_RETRY) c->state = S_DONE;
            }
        }
    }
    now = now_ns();
    w->finished_at = now < cfg.t_end ? now : cfg.t_end;
    return NULL;
}

static double tv_seconds(struct timeval tv) { return (double)tv.tv_sec + tv.tv_usec / 1e6; }

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return tv_seconds(ru.ru_utime) + tv_seconds(ru.ru_stime);
}

static void sleep_until(uint64_t t) {
    for (;;) {
        uint64_t now = now_ns();
        if (now >= t) return;
        uint64_t left = t - now;
        struct timespec ts = {.tv_sec = (time_t)(left / 1000000000ull),
                              .tv_nsec = (long)(left % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
}

/* ------------------------------------------------------------------ reference server */

typedef struct {
    int fd;
    size_t len;
    char buf[8192];
} sconn_t;

static const char HTTP_REPLY[] =
    "HTTP/1.1 200 OK\r\nServer: loadgen\r\nContent-Type: text/plain\r\n"
    "Content-Length: 14\r\n\r\nHello, world!\n";

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else {
            return -1; /* replies are tiny: a full buffer means a dead client */
        }
    }
    return 0;
}

/* Answer every complete HTTP request in the buffer; return -1 to close. */
static int http_serve(sconn_t *s) {
    for (;;) {
        char *end = memmem(s->buf, s->len, "\r\n\r\n", 4);
        if (end == NULL) return s->len >= sizeof s->buf ? -1 : 0;
        size_t head = (size_t)(end - s->buf) + 4;
        char saved = s->buf[head - 1];
        s->buf[head - 1] = '\0';
        int close_after = strcasestr(s->buf, "connection: close") != NULL;
        s->buf[head - 1] = saved;
        if (write_all(s->fd, HTTP_REPLY, sizeof HTTP_REPLY - 1) < 0 || close_after) return -1;
        memmove(s->buf, s->buf + head, s->len - head);
        s->len -= head;
    }
}

static int serve(int port, int http) {
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = cfg.addr;
    a.sin_port = htons((uint16_t)port);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(lfd, 2048) < 0) die("listen");
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            sconn_t *s = events[i].data.ptr;
            if (s == NULL) {
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) break;
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    sconn_t *ns = calloc(1, sizeof *ns);
                    if (ns == NULL) die("calloc");
                    ns->fd = cfd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = ns};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            ssize_t k = recv(s->fd, s->buf + s->len, sizeof s->buf - s->len, 0);
            int drop = 0;
            if (k > 0) {
                if (http) {
                    s->len += (size_t)k;
                    drop = http_serve(s) < 0;
                } else {
                    drop = write_all(s->fd, s->buf, (size_t)k) < 0;
                }
            } else if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
                drop = 1;
            }
            if (drop) {
                close(s->fd);
                free(s);
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen -p PORT [-a ADDR] [-c CLIENTS] [-m keepalive|close] [-d SECONDS]\n"
            "               [-w SECONDS] [-n MAX_REPLIES] [-s SIZE] [-T SECONDS] [-t THREADS]"
            " [-H] [-P]\n"
            "       loadgen -L PORT [-a ADDR] [-P]   (reference server: line echo / HTTP)\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, listen_port = 0, http = 0;
    cfg.clients = 32;
    cfg.keepalive = 1;
    cfg.duration = 5.0;
    cfg.warmup = 1.0;
    cfg.max_replies = 100000000ull;
    cfg.size = 65;
    cfg.timeout = 2.0;
    cfg.threads = 1;
    int opt;
    while ((opt = getopt(argc, argv, "a:p:c:m:d:w:n:s:T:t:HL:P")) != -1) {
        switch (opt) {
        case 'a': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': cfg.clients = atoi(optarg); break;
        case 'm':
            if (strcmp(optarg, "keepalive") == 0) cfg.keepalive = 1;
            else if (strcmp(optarg, "close") == 0) cfg.keepalive = 0;
            else usage();
            break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 'n': cfg.max_replies = strtoull(optarg, NULL, 10); break;
        case 's': cfg.size = (size_t)atol(optarg); break;
        case 'T': cfg.timeout = atof(optarg); break;
        case 't': cfg.threads = atoi(optarg); break;
        case 'H': cfg.hold = 1; break;
        case 'L': listen_port = atoi(optarg); break;
        case 'P': http = 1; cfg.http = 1; break;
        default: usage();
        }
    }
    memset(&cfg.addr, 0, sizeof cfg.addr);
    cfg.addr.sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &cfg.addr.sin_addr) != 1) usage();
    if (listen_port > 0) return serve(listen_port, http);
    if (port <= 0 || cfg.clients < 1 || cfg.threads < 1 || cfg.size < 1 ||
        cfg.duration <= 0 || cfg.warmup < 0 || cfg.timeout <= 0 || cfg.max_replies < 1)
        usage();
    if (cfg.threads > cfg.clients) cfg.threads = cfg.clients;
    cfg.addr.sin_port = htons((uint16_t)port);
    signal(SIGPIPE, SIG_IGN);

    if (cfg.http) {
        char req[256];
        int len = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n", host,
                           port, cfg.keepalive ? "" : "Connection: close\r\n");
        cfg.size = (size_t)len;
        cfg.request = strdup(req);
        if (cfg.request == NULL) die("strdup");
    } else {
        cfg.request = malloc(cfg.size);
        if (cfg.request == NULL) die("malloc");
        for (size_t i = 0; i + 1 < cfg.size; i++) cfg.request[i] = (char)('a' + i % 26);
        cfg.request[cfg.size - 1] = '\n';
    }

    conn_t *conns = calloc((size_t)cfg.clients, sizeof *conns);
    worker_t *workers = calloc((size_t)cfg.threads, sizeof *workers);
    pthread_t *tids = calloc((size_t)cfg.threads, sizeof *tids);
    if (conns == NULL || workers == NULL || tids == NULL) die("calloc");
    uint64_t t0 = now_ns();
    cfg.t_window = t0 + (uint64_t)(cfg.warmup * 1e9);
    cfg.t_end = cfg.t_window + (uint64_t)(cfg.duration * 1e9);
    int per = cfg.clients / cfg.threads, extra = cfg.clients % cfg.threads, next = 0;
    for (int i = 0; i < cfg.threads; i++) {
        worker_t *w = &workers[i];
        w->id = i;
        w->nconns = per + (i < extra ? 1 : 0);
        w->conns = conns + next;
        for (int j = 0; j < w->nconns; j++) {
            w->conns[j].fd = -1;
            w->conns[j].client = next + j;
            if (cfg.http) {
                w->conns[j].buf = malloc(HTTP_BUF + 1);
                if (w->conns[j].buf == NULL) die("malloc");
            }
        }
        next += w->nconns;
        w->max_replies = cfg.max_replies / (uint64_t)cfg.threads +
                         ((uint64_t)i < cfg.max_replies % (uint64_t)cfg.threads ? 1 : 0);
        if (w->max_replies == 0) w->max_replies = 1;
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (w->epfd < 0) die("epoll_create1");
        w->hist = calloc(HIST_N, sizeof *w->hist);
        if (w->hist == NULL) die("calloc");
    }
    for (int i = 0; i < cfg.threads; i++)
        if (pthread_create(&tids[i], NULL, run_worker, &workers[i]) != 0) die("pthread_create");
    sleep_until(cfg.t_window);
    double cpu0 = cpu_seconds();
    printf("start\n");
    fflush(stdout);
    for (int i = 0; i < cfg.threads; i++) pthread_join(tids[i], NULL);
    double cpu1 = cpu_seconds();

    uint64_t *hist = calloc(HIST_N, sizeof *hist);
    if (hist == NULL) die("calloc");
    uint64_t replies = 0, timeouts = 0, cerr = 0, ioerr = 0, eof = 0, bad = 0, connects = 0;
    uint64_t closes = 0;
    uint64_t lat_max = 0, lat_sum = 0, finished = cfg.t_window;
    for (int i = 0; i < cfg.threads; i++) {
        worker_t *w = &workers[i];
        replies += w->replies;
        timeouts += w->timeouts;
        cerr += w->connect_errors;
        ioerr += w->io_errors;
        eof += w->eof_errors;
        bad += w->bad_replies;
        closes += w->server_closes;
        connects += w->connects;
        lat_sum += w->lat_sum;
        if (w->lat_max > lat_max) lat_max = w->lat_max;
        if (w->finished_at > finished) finished = w->finished_at;
        for (uint64_t k = 0; k < HIST_N; k++) hist[k] += w->hist[k];
    }
    int served = 0;
    uint64_t min_per_client = UINT64_MAX, max_per_client = 0;
    for (int i = 0; i < cfg.clients; i++) {
        if (conns[i].responses > 0) served++;
        if (conns[i].responses < min_per_client) min_per_client = conns[i].responses;
        if (conns[i].responses > max_per_client) max_per_client = conns[i].responses;
    }
    double elapsed = (double)(finished - cfg.t_window) / 1e9;
    if (elapsed <= 0) elapsed = 1e-9;
    printf("{\"mode\": \"%s\", \"clients\": %d, \"threads\": %d, \"elapsed\": %.6f, "
           "\"replies\": %" PRIu64 ", \"rps\": %.3f, \"timeouts\": %" PRIu64
           ", \"connect_errors\": %" PRIu64 ", \"io_errors\": %" PRIu64
           ", \"eof_errors\": %" PRIu64 ", \"bad_replies\": %" PRIu64
           ", \"errors\": %" PRIu64 ", \"server_closes\": %" PRIu64
           ", \"connects\": %" PRIu64
           ", \"clients_served\": %d, \"min_per_client\": %" PRIu64
           ", \"max_per_client\": %" PRIu64
           ", \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %" PRIu64
           ", \"mean_us\": %.1f, \"cpu_s\": %.6f}\n",
           cfg.keepalive ? "keepalive" : "close", cfg.clients, cfg.threads, elapsed, replies,
           (double)replies / elapsed, timeouts, cerr, ioerr, eof, bad,
           timeouts + cerr + ioerr + eof + bad, closes, connects, served, min_per_client,
           max_per_client, hist_percentile(hist, replies, 50), hist_percentile(hist, replies, 90),
           hist_percentile(hist, replies, 99), lat_max,
           replies ? (double)lat_sum / (double)replies : 0.0, cpu1 - cpu0);
    fflush(stdout);
    if (cfg.hold) {
        char buf[256];
        while (read(STDIN_FILENO, buf, sizeof buf) > 0) {
        }
    }
    for (int i = 0; i < cfg.clients; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
