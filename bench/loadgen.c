/*
 * loadgen.c - a small MQTT 3.1.1 load generator for the lichen benchmark suite.
 *
 * One process, one thread, non-blocking sockets driven by epoll.  It speaks
 * just enough MQTT 3.1.1 to drive a broker: CONNECT/CONNACK, PUBLISH (QoS 0
 * and 1), PUBACK, SUBSCRIBE/SUBACK and DISCONNECT.
 *
 * Modes:
 *   fanin     P publishers -> 1 subscriber on "<prefix>/fanin/+"
 *   fanout    1 publisher  -> S subscribers on "<prefix>/fanout"
 *   latency   paced publisher (--rate msg/s), publish-to-receive latency
 *   idle      open N connections, hold them until stdin EOF / SIGTERM / --duration
 *   retained  publish R retained messages on distinct topics, then time how long one
 *             "<prefix>/retained/#" subscription takes to receive all of them
 *
 * The result is printed as a single JSON line on stdout.  Every result carries
 * the generator's own CPU time (getrusage) so the caller can verify it was
 * not the bottleneck.
 *
 * Build: gcc -O2 -Wall -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ types */

enum role { R_PUB, R_SUB, R_IDLE, R_TIMER, R_STDIN };
enum cstate { S_TCP, S_CONNACK, S_READY, S_SUBACK, S_SUBSCRIBED, S_CLOSED };
enum mode { M_FANIN, M_FANOUT, M_LATENCY, M_IDLE, M_RETAINED };
enum phase { P_SETUP, P_RUN, P_DRAIN, P_HOLD, P_DONE };

typedef struct conn {
    int fd;
    int role;
    int state;
    int idx;
    uint32_t events; /* events currently registered with epoll */
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_off, out_len, out_cap;
    /* publisher side */
    uint64_t sent, acked;
    uint32_t inflight;
    uint16_t next_pid;
    /* subscriber side */
    uint64_t recv, recv_retained;
} conn_t;

#define PUB_HIGH_WATER (128 * 1024) /* max bytes queued by a publisher before writing */
#define BLOCK_TARGET (64 * 1024)    /* size of a pre-built block of QoS 0 PUBLISH packets */
#define SUB_IN_CAP (1024 * 1024)
#define MAX_EVENTS 512

/* ----------------------------------------------------------------- config */

static struct {
    int mode;
    const char *mode_name;
    const char *host;
    const char *port;
    const char *prefix;
    int qos;
    int pubs;
    int subs;
    int size;
    double duration;
    double warmup;
    int window;
    double rate;
    long count;
    int conns;
    int concurrency;
    double timeout;
    int keepalive;
    int coalesce_us;
    long max_backlog;
    double stall;
    int topics;
} cfg = {
    .host = "127.0.0.1",
    .port = "1883",
    .prefix = NULL, /* default: bench/<pid>, so runs never see each other's traffic */
    .qos = 0,
    .pubs = 4,
    .subs = 20,
    .size = 64,
    .duration = 5.0,
    .warmup = 1.0,
    .window = 64,
    .rate = 2000.0,
    .count = 0,
    .conns = 1000,
    .concurrency = 64,
    .timeout = 0.0,
    .keepalive = 60,
    .coalesce_us = -1,
    .max_backlog = 10000,
    .stall = 10.0,
    .topics = 1,
};

/* ------------------------------------------------------------------ state */

static int g_ep = -1;
static struct sockaddr_storage g_addr;
static socklen_t g_addrlen;
static volatile sig_atomic_t g_signalled;
static char g_error[256];
static int g_phase = P_SETUP;
static size_t g_iter_bytes; /* bytes read during the current event-loop iteration */
/* QoS 0 flow control: publishers pause while too many messages are unaccounted for */
static int g_paused;
static uint64_t g_lost;       /* deliveries written off as dropped by the broker */
static uint64_t g_pause_recv; /* deliveries seen when the last progress check ran */
static int64_t t_pause_check;

static conn_t **g_conns; /* every MQTT connection, publishers first */
static int g_nconns;
static conn_t **g_pubs, **g_subs;
static int g_npubs, g_nsubs;

static int64_t t_begin, t_deadline, t_run, t_win_start, t_win_end;
static struct rusage ru_begin, ru_win_start, ru_win_end;
static uint64_t snap_recv0, snap_sent0, snap_recv1, snap_sent1;
static int win_started;

/* pre-built packets */
static uint8_t *g_block; /* K copies of one QoS 0 PUBLISH */
static size_t g_block_len, g_block_msgs;
static uint8_t *g_tmpl; /* one QoS 1 PUBLISH, packet id patched per send */
static size_t g_tmpl_len, g_tmpl_pid_off, g_tmpl_payload_off;

/* latency */
static int g_tfd = -1;
static conn_t g_timer_conn, g_stdin_conn;
static int64_t g_interval_ns;
static uint64_t lat_k, lat_planned;
static int64_t *lat_send, *lat_sched;
static size_t lat_n, lat_cap;
static uint64_t lat_recv_total;
static int64_t t_pub_end;

/* idle */
static int idle_started, idle_connected, idle_failed, idle_dropped;
static int64_t t_all_connected;
static int idle_reported;

/* retained */
static int64_t t_ret_pub_start, t_ret_pub_done, t_ret_sub, t_ret_first, t_ret_done;
static conn_t *g_ret_sub;
static int64_t t_progress; /* last PUBACK or retained delivery (stall detection) */
static uint64_t g_bad;     /* PUBLISH packets whose payload was not the size we sent */

/* ---------------------------------------------------------------- helpers */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double ru_cpu(const struct rusage *r)
{
    return r->ru_utime.tv_sec + r->ru_utime.tv_usec / 1e6 + r->ru_stime.tv_sec +
           r->ru_stime.tv_usec / 1e6;
}

static void set_error(const char *fmt, ...)
{
    if (g_error[0])
        return; /* keep the first error */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
    g_phase = P_DONE;
}

static void die(const char *msg)
{
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        die("out of memory");
    return p;
}

static void on_signal(int sig)
{
    (void)sig;
    g_signalled = 1;
}

/* ------------------------------------------------------- MQTT encoding */

static size_t enc_varint(uint8_t *p, uint32_t v)
{
    size_t n = 0;
    do {
        uint8_t b = v % 128;
        v /= 128;
        if (v)
            b |= 0x80;
        p[n++] = b;
    } while (v);
    return n;
}

static size_t enc_str(uint8_t *p, const char *s, size_t len)
{
    p[0] = (uint8_t)(len >> 8);
    p[1] = (uint8_t)len;
    memcpy(p + 2, s, len);
    return len + 2;
}

static size_t build_connect(uint8_t *p, const char *client_id, int keepalive)
{
    size_t idl = strlen(client_id);
    uint32_t rem = 10 + 2 + (uint32_t)idl;
    size_t n = 0;
    p[n++] = 0x10;
    n += enc_varint(p + n, rem);
    n += enc_str(p + n, "MQTT", 4);
    p[n++] = 4;    /* protocol level 3.1.1 */
    p[n++] = 0x02; /* clean session */
    p[n++] = (uint8_t)(keepalive >> 8);
    p[n++] = (uint8_t)keepalive;
    n += enc_str(p + n, client_id, idl);
    return n;
}

static size_t build_subscribe(uint8_t *p, uint16_t pid, const char *filter, int qos)
{
    size_t fl = strlen(filter);
    uint32_t rem = 2 + 2 + (uint32_t)fl + 1;
    size_t n = 0;
    p[n++] = 0x82;
    n += enc_varint(p + n, rem);
    p[n++] = (uint8_t)(pid >> 8);
    p[n++] = (uint8_t)pid;
    n += enc_str(p + n, filter, fl);
    p[n++] = (uint8_t)qos;
    return n;
}

/* Writes a PUBLISH header (fixed header, topic, packet id); returns its length.
 * *pid_off receives the offset of the packet id (0 for QoS 0). */
static size_t build_publish_hdr(uint8_t *p, int qos, int retain, const char *topic,
                                uint16_t pid, size_t payload_len, size_t *pid_off)
{
    size_t tl = strlen(topic);
    uint32_t rem = 2 + (uint32_t)tl + (qos ? 2 : 0) + (uint32_t)payload_len;
    size_t n = 0;
    p[n++] = (uint8_t)(0x30 | (qos << 1) | (retain ? 1 : 0));
    n += enc_varint(p + n, rem);
    n += enc_str(p + n, topic, tl);
    if (pid_off)
        *pid_off = 0;
    if (qos) {
        if (pid_off)
            *pid_off = n;
        p[n++] = (uint8_t)(pid >> 8);
        p[n++] = (uint8_t)pid;
    }
    return n;
}

/* --------------------------------------------------------- buffers / IO */

static void out_reserve(conn_t *c, size_t need)
{
    if (c->out_off && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + need <= c->out_cap)
        return;
    if (c->out_off) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + need <= c->out_cap)
        return;
    size_t cap = c->out_cap ? c->out_cap : 256;
    while (cap < c->out_len + need)
        cap *= 2;
    c->out = realloc(c->out, cap);
    if (!c->out)
        die("out of memory");
    c->out_cap = cap;
}

static void out_append(conn_t *c, const void *data, size_t len)
{
    out_reserve(c, len);
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static size_t out_pending(const conn_t *c)
{
    return c->out_len - c->out_off;
}

static void ep_set(conn_t *c, uint32_t events)
{
    if (c->fd < 0 || c->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->events = events;
}

static int blasting(const conn_t *c);

static void conn_close(conn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = S_CLOSED;
}

static void conn_lost(conn_t *c, const char *why);

/* Writes as much of the output buffer as the socket takes.  Returns 0 when the
 * buffer is empty, 1 when the socket is full, -1 on error. */
static int conn_flush(conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ep_set(c, EPOLLIN | EPOLLOUT);
            return 1;
        }
        if (n < 0 && errno == EINTR)
            continue;
        conn_lost(c, n < 0 ? strerror(errno) : "write returned 0");
        return -1;
    }
    c->out_off = c->out_len = 0;
    if (!blasting(c))
        ep_set(c, EPOLLIN);
    return 0;
}

static conn_t *conn_new(int role, int idx)
{
    conn_t *c = calloc(1, sizeof *c);
    if (!c)
        die("out of memory");
    c->fd = -1;
    c->role = role;
    c->idx = idx;
    c->next_pid = 1;
    c->state = S_CLOSED;
    return c;
}

static int conn_open(conn_t *c)
{
    int fd = socket(g_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        set_error("socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&g_addr, g_addrlen) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        conn_lost(c, strerror(e));
        return -1;
    }
    c->fd = fd;
    c->state = S_TCP;
    c->events = EPOLLIN | EPOLLOUT;
    struct epoll_event ev = {.events = c->events, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl ADD");
    return 0;
}

static void send_connect(conn_t *c)
{
    char id[64];
    const char *r = c->role == R_PUB ? "p" : c->role == R_SUB ? "s" : "i";
    snprintf(id, sizeof id, "lg%d-%s-%s%d", (int)getpid(), cfg.mode_name, r, c->idx);
    uint8_t buf[128];
    size_t n = build_connect(buf, id, cfg.keepalive);
    out_append(c, buf, n);
    c->state = S_CONNACK;
    conn_flush(c);
}

static int64_t t_sub_sent;

static void send_subscribe(conn_t *c, const char *filter)
{
    uint8_t buf[512];
    size_t n = build_subscribe(buf, 1, filter, cfg.qos);
    out_append(c, buf, n);
    c->state = S_SUBACK;
    t_sub_sent = now_ns();
    conn_flush(c);
}

/* ------------------------------------------------------------ publishing */

static char g_topic[256];

static int blasting(const conn_t *c)
{
    return c->role == R_PUB && cfg.qos == 0 && g_phase == P_RUN && !g_paused &&
           (cfg.mode == M_FANIN || cfg.mode == M_FANOUT) && c->state == S_READY;
}

static void build_templates(const char *topic)
{
    /* payload: 8-byte send time + 8-byte scheduled time, then filler */
    size_t plen = (size_t)cfg.size;
    uint8_t hdr[512];
    size_t pid_off;
    size_t hl = build_publish_hdr(hdr, cfg.qos, 0, topic, 1, plen, &pid_off);
    g_tmpl_len = hl + plen;
    g_tmpl = xmalloc(g_tmpl_len);
    memcpy(g_tmpl, hdr, hl);
    for (size_t i = 0; i < plen; i++)
        g_tmpl[hl + i] = (uint8_t)('a' + i % 26);
    g_tmpl_pid_off = pid_off;
    g_tmpl_payload_off = hl;
    if (cfg.qos == 0) {
        g_block_msgs = BLOCK_TARGET / g_tmpl_len;
        if (g_block_msgs < 1)
            g_block_msgs = 1;
        g_block_len = g_block_msgs * g_tmpl_len;
        g_block = xmalloc(g_block_len);
        for (size_t i = 0; i < g_block_msgs; i++)
            memcpy(g_block + i * g_tmpl_len, g_tmpl, g_tmpl_len);
    }
}

/* Per-publisher templates: fan-in publishers each use their own topic. */
typedef struct {
    uint8_t *tmpl;
    size_t len, pid_off;
    uint8_t *block;
    size_t block_len, block_msgs;
} ptmpl_t;
static ptmpl_t *g_ptmpl;

/* --topics N (QoS 0 fan-in): publisher i's block cycles over the N topics
 * <prefix>/fanin/<i>.<k>, k < N (zero-padded, so every packet has the same size); the
 * block holds a whole number of cycles, at least one. */
static void build_multi_topic_block(int i)
{
    char topic[300];
    snprintf(topic, sizeof topic, "%s/fanin/%d.%06d", cfg.prefix, i, 0);
    build_templates(topic); /* sizes and payload; its block is replaced below */
    size_t cycles = g_block_msgs / (size_t)cfg.topics;
    if (cycles < 1)
        cycles = 1;
    g_block_msgs = cycles * (size_t)cfg.topics;
    g_block_len = g_block_msgs * g_tmpl_len;
    free(g_block);
    g_block = xmalloc(g_block_len);
    size_t topic_off = g_tmpl_payload_off - 6; /* QoS 0: the topic ends the header */
    for (size_t m = 0; m < g_block_msgs; m++) {
        uint8_t *p = g_block + m * g_tmpl_len;
        memcpy(p, g_tmpl, g_tmpl_len);
        char k[8];
        snprintf(k, sizeof k, "%06d", (int)(m % (size_t)cfg.topics));
        memcpy(p + topic_off, k, 6);
    }
}

static void build_pub_templates(void)
{
    g_ptmpl = calloc((size_t)g_npubs, sizeof *g_ptmpl);
    for (int i = 0; i < g_npubs; i++) {
        char topic[300];
        if (cfg.mode == M_FANIN && cfg.topics > 1) {
            build_multi_topic_block(i);
        } else {
            if (cfg.mode == M_FANIN)
                snprintf(topic, sizeof topic, "%s/fanin/%d", cfg.prefix, i);
            else
                snprintf(topic, sizeof topic, "%s", g_topic);
            build_templates(topic);
        }
        g_ptmpl[i] = (ptmpl_t){g_tmpl, g_tmpl_len, g_tmpl_pid_off, g_block, g_block_len,
                               g_block_msgs};
        g_block = NULL;
    }
}

static int64_t backlog(void);

static void pump_fan(conn_t *c)
{
    ptmpl_t *t = &g_ptmpl[c->idx];
    if (cfg.qos == 0) {
        for (int rounds = 0; rounds < 16; rounds++) {
            if (cfg.max_backlog > 0 && backlog() > cfg.max_backlog) {
                g_paused = 1;
                ep_set(c, EPOLLIN);
                conn_flush(c);
                return;
            }
            if (out_pending(c) < PUB_HIGH_WATER) {
                out_append(c, t->block, t->block_len);
                c->sent += t->block_msgs;
            }
            int r = conn_flush(c);
            if (r != 0)
                return;
        }
        return;
    }
    while (c->inflight < (uint32_t)cfg.window) {
        out_reserve(c, t->len);
        uint8_t *p = c->out + c->out_len;
        memcpy(p, t->tmpl, t->len);
        p[t->pid_off] = (uint8_t)(c->next_pid >> 8);
        p[t->pid_off + 1] = (uint8_t)c->next_pid;
        if (++c->next_pid == 0)
            c->next_pid = 1;
        c->out_len += t->len;
        c->inflight++;
        c->sent++;
    }
    conn_flush(c);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void pump_latency(conn_t *c, int64_t now)
{
    if (g_phase != P_RUN || c->state != S_READY)
        return;
    uint64_t due = (uint64_t)((double)(now - t_run) / (double)g_interval_ns) + 1;
    if (due > lat_planned)
        due = lat_planned;
    int wrote = 0;
    while (lat_k < due && (cfg.qos == 0 || c->inflight < (uint32_t)cfg.window)) {
        out_reserve(c, g_tmpl_len);
        uint8_t *p = c->out + c->out_len;
        memcpy(p, g_tmpl, g_tmpl_len);
        if (cfg.qos) {
            p[g_tmpl_pid_off] = (uint8_t)(c->next_pid >> 8);
            p[g_tmpl_pid_off + 1] = (uint8_t)c->next_pid;
            if (++c->next_pid == 0)
                c->next_pid = 1;
            c->inflight++;
        }
        put_u64(p + g_tmpl_payload_off, (uint64_t)now_ns());
        put_u64(p + g_tmpl_payload_off + 8, (uint64_t)(t_run + (int64_t)lat_k * g_interval_ns));
        c->out_len += g_tmpl_len;
        c->sent++;
        lat_k++;
        wrote = 1;
    }
    if (wrote)
        conn_flush(c);
    if (lat_k >= lat_planned) {
        g_phase = P_DRAIN;
        t_pub_end = now;
    }
}

static void pump_retained(conn_t *c)
{
    if (c->state != S_READY)
        return;
    while (c->sent < (uint64_t)cfg.count && c->inflight < (uint32_t)cfg.window) {
        char topic[300];
        snprintf(topic, sizeof topic, "%s/retained/%llu", cfg.prefix,
                 (unsigned long long)c->sent);
        uint8_t hdr[512];
        size_t pid_off;
        size_t hl = build_publish_hdr(hdr, 1, 1, topic, c->next_pid, (size_t)cfg.size, &pid_off);
        if (++c->next_pid == 0)
            c->next_pid = 1;
        out_reserve(c, hl + (size_t)cfg.size);
        memcpy(c->out + c->out_len, hdr, hl);
        memset(c->out + c->out_len + hl, 'r', (size_t)cfg.size);
        c->out_len += hl + (size_t)cfg.size;
        c->inflight++;
        c->sent++;
    }
    conn_flush(c);
}

static void pump(conn_t *c, int64_t now)
{
    if (c->fd < 0 || c->role != R_PUB)
        return;
    switch (cfg.mode) {
    case M_FANIN:
    case M_FANOUT:
        if (g_phase == P_RUN && c->state == S_READY)
            pump_fan(c);
        break;
    case M_LATENCY:
        pump_latency(c, now);
        break;
    case M_RETAINED:
        pump_retained(c);
        break;
    }
}

/* ------------------------------------------------------ packet handling */

static void start_idle_connects(void);
static void retained_start_sub(void);

static void on_connack(conn_t *c, const uint8_t *body, uint32_t len)
{
    if (len < 2 || body[1] != 0) {
        set_error("CONNACK refused (rc=%d)", len >= 2 ? body[1] : -1);
        return;
    }
    switch (cfg.mode) {
    case M_IDLE:
        c->state = S_READY;
        idle_connected++;
        start_idle_connects();
        return;
    case M_RETAINED:
        if (c->role == R_SUB) {
            char f[300];
            snprintf(f, sizeof f, "%s/retained/#", cfg.prefix);
            send_subscribe(c, f);
            t_ret_sub = t_sub_sent;
            t_progress = t_ret_sub;
        } else {
            c->state = S_READY;
            t_ret_pub_start = now_ns();
            t_progress = t_ret_pub_start;
            pump_retained(c);
        }
        return;
    default:
        if (c->role == R_SUB) {
            char f[300];
            if (cfg.mode == M_FANIN)
                snprintf(f, sizeof f, "%s/fanin/+", cfg.prefix);
            else
                snprintf(f, sizeof f, "%s", g_topic);
            send_subscribe(c, f);
        } else {
            c->state = S_READY;
        }
    }
}

static void on_suback(conn_t *c, const uint8_t *body, uint32_t len)
{
    if (len < 3 || body[2] == 0x80) {
        set_error("SUBSCRIBE refused");
        return;
    }
    c->state = S_SUBSCRIBED;
}

static void on_puback(conn_t *c, int64_t now)
{
    if (c->inflight)
        c->inflight--;
    c->acked++;
    t_progress = now;
    if (cfg.mode == M_RETAINED && c->acked == (uint64_t)cfg.count) {
        t_ret_pub_done = now;
        static const uint8_t disc[2] = {0xE0, 0x00};
        out_append(c, disc, 2);
        conn_flush(c);
        conn_close(c);
        retained_start_sub();
    }
}

static void on_publish(conn_t *c, uint8_t h, const uint8_t *body, uint32_t len, int64_t now)
{
    int qos = (h >> 1) & 3;
    if (len < 2)
        return;
    uint32_t tl = ((uint32_t)body[0] << 8) | body[1];
    uint32_t pos = 2 + tl;
    if (qos) {
        if (pos + 2 > len)
            return;
        uint8_t ack[4] = {qos == 1 ? 0x40 : 0x50, 0x02, body[pos], body[pos + 1]};
        out_append(c, ack, 4);
        pos += 2;
    }
    c->recv++;
    if (h & 1)
        c->recv_retained++;
    if (len - pos != (uint32_t)cfg.size)
        g_bad++;
    if (cfg.mode == M_LATENCY && pos + 16 <= len) {
        int64_t sent = (int64_t)get_u64(body + pos);
        int64_t sched = (int64_t)get_u64(body + pos + 8);
        lat_recv_total++;
        if (sched >= t_run + (int64_t)(cfg.warmup * 1e9) && lat_n < lat_cap) {
            lat_send[lat_n] = now - sent;
            lat_sched[lat_n] = now - sched;
            lat_n++;
        }
    } else if (cfg.mode == M_RETAINED && (h & 1)) {
        t_progress = now;
        if (c->recv_retained == 1)
            t_ret_first = now;
        if (c->recv_retained == (uint64_t)cfg.count) {
            t_ret_done = now;
            g_phase = P_DONE;
        }
    }
}

/* Parses every complete packet in c->in.  Returns -1 on a malformed stream. */
static int parse_input(conn_t *c)
{
    size_t pos = 0;
    int64_t now = 0;
    while (c->in_len - pos >= 2) {
        uint8_t *p = c->in + pos;
        size_t avail = c->in_len - pos;
        uint32_t rem = 0, mult = 1;
        size_t i = 1;
        int complete = 0;
        while (i < avail && i <= 4) {
            uint8_t b = p[i++];
            rem += (uint32_t)(b & 127) * mult;
            if (!(b & 128)) {
                complete = 1;
                break;
            }
            mult *= 128;
        }
        if (!complete) {
            if (i > 4) {
                set_error("malformed remaining length");
                return -1;
            }
            break;
        }
        if (avail < i + rem) {
            if (i + rem > c->in_cap) { /* a packet larger than the buffer: grow it */
                size_t cap = c->in_cap;
                while (cap < i + rem)
                    cap *= 2;
                if (pos) {
                    memmove(c->in, c->in + pos, avail);
                    c->in_len = avail;
                    pos = 0;
                }
                c->in = realloc(c->in, cap);
                if (!c->in)
                    die("out of memory");
                c->in_cap = cap;
            }
            break;
        }
        const uint8_t *body = p + i;
        switch (p[0] >> 4) {
        case 2:
            on_connack(c, body, rem);
            break;
        case 3:
            if (!now)
                now = now_ns();
            if (cfg.mode == M_LATENCY)
                now = now_ns();
            on_publish(c, p[0], body, rem, now);
            break;
        case 4:
            if (!now)
                now = now_ns();
            on_puback(c, now);
            break;
        case 9:
            on_suback(c, body, rem);
            break;
        default:
            break; /* PINGRESP, PUBREC, ... are ignored */
        }
        if (c->fd < 0) /* closed while handling (retained publisher) */
            return 0;
        pos += i + rem;
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return 0;
}

static void conn_read(conn_t *c)
{
    if (!c->in) {
        c->in_cap = c->role == R_SUB ? SUB_IN_CAP : (c->role == R_IDLE ? 512 : 64 * 1024);
        c->in = xmalloc(c->in_cap);
    }
    for (int rounds = 0; rounds < 8; rounds++) {
        size_t space = c->in_cap - c->in_len;
        ssize_t n = read(c->fd, c->in + c->in_len, space);
        if (n > 0) {
            c->in_len += (size_t)n;
            g_iter_bytes += (size_t)n;
            if (parse_input(c) < 0 || c->fd < 0)
                return;
            if ((size_t)n < space)
                break;
            continue;
        }
        if (n == 0) {
            conn_lost(c, "connection closed by broker");
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            conn_lost(c, strerror(errno));
        break;
    }
    if (c->fd < 0)
        return;
    if (c->role == R_PUB)
        pump(c, now_ns()); /* acks may have opened the window */
    if (c->fd >= 0 && out_pending(c))
        conn_flush(c);
}

static void conn_lost(conn_t *c, const char *why)
{
    int was_connecting = c->state == S_TCP || c->state == S_CONNACK;
    conn_close(c);
    if (cfg.mode == M_IDLE) {
        if (was_connecting) {
            idle_failed++;
            start_idle_connects();
        } else {
            idle_dropped++;
        }
        return;
    }
    if (g_phase != P_DONE)
        set_error("%s %d: %s", c->role == R_PUB ? "publisher" : "subscriber", c->idx, why);
}

static void conn_event(conn_t *c, uint32_t ev, int64_t now)
{
    if (c->fd < 0)
        return;
    if (c->state == S_TCP) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            conn_lost(c, strerror(err));
            return;
        }
        ep_set(c, EPOLLIN);
        send_connect(c);
        return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
        conn_read(c);
    if (c->fd < 0)
        return;
    if (ev & EPOLLOUT) {
        if (conn_flush(c) < 0)
            return;
        pump(c, now);
    }
}

/* ----------------------------------------------------------- mode setup */

static void start_idle_connects(void)
{
    while (idle_started < cfg.conns &&
           idle_started - idle_connected - idle_failed < cfg.concurrency) {
        conn_t *c = g_conns[idle_started++];
        conn_open(c);
    }
}

static void retained_start_sub(void)
{
    g_ret_sub = g_subs[0];
    conn_open(g_ret_sub);
}

static void setup(void)
{
    switch (cfg.mode) {
    case M_FANIN:
        g_npubs = cfg.pubs;
        g_nsubs = 1;
        break;
    case M_FANOUT:
        g_npubs = 1;
        g_nsubs = cfg.subs;
        snprintf(g_topic, sizeof g_topic, "%s/fanout", cfg.prefix);
        break;
    case M_LATENCY:
        g_npubs = 1;
        g_nsubs = 1;
        snprintf(g_topic, sizeof g_topic, "%s/latency", cfg.prefix);
        break;
    case M_RETAINED:
        g_npubs = 1;
        g_nsubs = 1;
        break;
    case M_IDLE:
        g_npubs = 0;
        g_nsubs = 0;
        break;
    }
    int total = cfg.mode == M_IDLE ? cfg.conns : g_npubs + g_nsubs;
    g_conns = calloc((size_t)total + 1, sizeof *g_conns);
    g_nconns = total;
    if (cfg.mode == M_IDLE) {
        for (int i = 0; i < total; i++)
            g_conns[i] = conn_new(R_IDLE, i);
        start_idle_connects();
        return;
    }
    for (int i = 0; i < g_npubs; i++)
        g_conns[i] = conn_new(R_PUB, i);
    for (int i = 0; i < g_nsubs; i++)
        g_conns[g_npubs + i] = conn_new(R_SUB, i);
    g_pubs = g_conns;
    g_subs = g_conns + g_npubs;

    if (cfg.mode == M_FANIN || cfg.mode == M_FANOUT)
        build_pub_templates();
    if (cfg.mode == M_LATENCY) {
        if (cfg.size < 16)
            cfg.size = 16;
        build_templates(g_topic);
        g_interval_ns = (int64_t)(1e9 / cfg.rate);
        lat_planned = (uint64_t)(cfg.rate * (cfg.warmup + cfg.duration));
        lat_cap = (size_t)(cfg.rate * cfg.duration) + 1024;
        lat_send = xmalloc(lat_cap * sizeof *lat_send);
        lat_sched = xmalloc(lat_cap * sizeof *lat_sched);
    }
    if (cfg.mode == M_RETAINED) {
        conn_open(g_pubs[0]); /* the subscriber connects once everything is stored */
        return;
    }
    for (int i = 0; i < total; i++)
        conn_open(g_conns[i]);
}

static uint64_t total_recv(void)
{
    uint64_t s = 0;
    for (int i = 0; i < g_nsubs; i++)
        s += g_subs[i]->recv;
    return s;
}

static uint64_t total_sent(void)
{
    uint64_t s = 0;
    for (int i = 0; i < g_npubs; i++)
        s += g_pubs[i]->sent;
    return s;
}

/* Messages published but not yet seen by every subscriber (QoS 0 fan modes). */
static int64_t backlog(void)
{
    int64_t owed = (int64_t)(total_sent() * (uint64_t)g_nsubs) - (int64_t)total_recv() -
                   (int64_t)g_lost;
    return owed / g_nsubs;
}

/* Resumes paused publishers once the backlog has halved; if nothing at all arrives for
 * half a second the outstanding messages are written off as dropped by the broker. */
static void flow_control(int64_t now)
{
    if (!g_paused || g_phase != P_RUN)
        return;
    int64_t b = backlog();
    if (b > cfg.max_backlog / 2) {
        uint64_t r = total_recv();
        if (r != g_pause_recv || !t_pause_check) {
            g_pause_recv = r;
            t_pause_check = now;
            return;
        }
        if (now - t_pause_check < 500000000LL)
            return;
        g_lost += (uint64_t)(b * g_nsubs);
    }
    g_paused = 0;
    t_pause_check = 0;
    for (int i = 0; i < g_npubs; i++) {
        ep_set(g_pubs[i], EPOLLIN | EPOLLOUT);
        pump(g_pubs[i], now);
    }
}

static int all_ready(void)
{
    for (int i = 0; i < g_npubs; i++)
        if (g_pubs[i]->state != S_READY)
            return 0;
    for (int i = 0; i < g_nsubs; i++)
        if (g_subs[i]->state != S_SUBSCRIBED)
            return 0;
    return 1;
}

static void start_run(int64_t now)
{
    g_phase = P_RUN;
    t_run = now;
    if (cfg.mode == M_LATENCY) {
        g_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (g_tfd < 0)
            die("timerfd_create");
        struct itimerspec its = {0};
        its.it_interval.tv_sec = g_interval_ns / 1000000000LL;
        its.it_interval.tv_nsec = g_interval_ns % 1000000000LL;
        its.it_value = its.it_interval;
        timerfd_settime(g_tfd, 0, &its, NULL);
        g_timer_conn.fd = g_tfd;
        g_timer_conn.role = R_TIMER;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &g_timer_conn};
        epoll_ctl(g_ep, EPOLL_CTL_ADD, g_tfd, &ev);
        pump_latency(g_pubs[0], now);
        return;
    }
    if (cfg.count > 0) { /* count mode: no warm-up, measure until count received */
        win_started = 1;
        t_win_start = now;
        snap_recv0 = total_recv();
        snap_sent0 = total_sent();
        getrusage(RUSAGE_SELF, &ru_win_start);
    }
    for (int i = 0; i < g_npubs; i++) {
        ep_set(g_pubs[i], cfg.qos == 0 ? EPOLLIN | EPOLLOUT : EPOLLIN);
        pump(g_pubs[i], now);
    }
}

static void end_window(int64_t now)
{
    t_win_end = now;
    snap_recv1 = total_recv();
    snap_sent1 = total_sent();
    getrusage(RUSAGE_SELF, &ru_win_end);
    g_phase = P_DONE;
}

static void print_idle_result(int64_t now);

static void tick(int64_t now)
{
    if (g_signalled && g_phase != P_DONE) {
        if (cfg.mode == M_IDLE && g_phase == P_HOLD)
            g_phase = P_DONE;
        else
            set_error("interrupted");
    }
    if (g_phase == P_DONE)
        return;
    switch (cfg.mode) {
    case M_FANIN:
    case M_FANOUT:
        if (g_phase == P_SETUP && all_ready())
            start_run(now);
        if (g_phase == P_RUN && cfg.qos == 0 && cfg.max_backlog > 0)
            flow_control(now);
        if (g_phase == P_RUN) {
            if (cfg.count > 0) {
                if (total_recv() - snap_recv0 >= (uint64_t)cfg.count)
                    end_window(now);
            } else if (!win_started && now >= t_run + (int64_t)(cfg.warmup * 1e9)) {
                win_started = 1;
                t_win_start = now;
                snap_recv0 = total_recv();
                snap_sent0 = total_sent();
                getrusage(RUSAGE_SELF, &ru_win_start);
            } else if (win_started && now >= t_win_start + (int64_t)(cfg.duration * 1e9)) {
                end_window(now);
            }
        }
        break;
    case M_LATENCY:
        if (g_phase == P_SETUP && all_ready())
            start_run(now);
        if (g_phase == P_DRAIN) {
            conn_t *p = g_pubs[0];
            int acked = cfg.qos == 0 || p->acked >= p->sent;
            if ((acked && lat_recv_total >= p->sent) || now > t_pub_end + 3000000000LL)
                g_phase = P_DONE;
        }
        break;
    case M_IDLE:
        if (g_phase == P_SETUP && idle_connected + idle_failed >= cfg.conns) {
            t_all_connected = now;
            print_idle_result(now);
            g_phase = P_HOLD;
        }
        /* the hold ends at stdin EOF, a signal, --duration, or at the latest --timeout */
        if (g_phase == P_HOLD && cfg.duration > 0 &&
            now >= t_all_connected + (int64_t)(cfg.duration * 1e9))
            g_phase = P_DONE;
        if (g_phase == P_HOLD && now >= t_all_connected + (int64_t)(cfg.timeout * 1e9))
            g_phase = P_DONE;
        break;
    case M_RETAINED:
        if (t_progress && now - t_progress > (int64_t)(cfg.stall * 1e9)) {
            conn_t *s = g_subs[0];
            set_error("stalled: no progress for %.0f s (%llu of %ld acked, %llu of %ld received)",
                      cfg.stall, (unsigned long long)g_pubs[0]->acked, cfg.count,
                      (unsigned long long)s->recv_retained, cfg.count);
        }
        break;
    }
    if (g_phase != P_HOLD && g_phase != P_DONE && now >= t_deadline) {
        if (cfg.mode == M_IDLE) {
            t_all_connected = now;
            print_idle_result(now);
            g_phase = P_HOLD;
        } else {
            if (cfg.mode == M_FANIN || cfg.mode == M_FANOUT) {
                if (win_started && g_phase == P_RUN)
                    end_window(now);
            }
            set_error("timeout after %.1f s", cfg.timeout);
        }
    }
}

/* ------------------------------------------------------------- results */

static void print_common(int64_t now)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double wall = (now - t_begin) / 1e9;
    double cpu = ru_cpu(&ru) - ru_cpu(&ru_begin);
    printf("\"lg_wall_s\":%.3f,\"lg_cpu_s\":%.3f,\"lg_cpu_pct\":%.1f,", wall, cpu,
           wall > 0 ? 100.0 * cpu / wall : 0.0);
    printf("\"lg_max_rss_kb\":%ld,", ru.ru_maxrss);
}

static void print_error_field(void)
{
    if (g_error[0]) {
        printf("\"error\":\"");
        for (const char *s = g_error; *s; s++) {
            if (*s == '"' || *s == '\\')
                putchar('\\');
            if ((unsigned char)*s >= 0x20)
                putchar(*s);
        }
        printf("\"}\n");
    } else {
        printf("\"error\":null}\n");
    }
}

static void print_idle_result(int64_t now)
{
    if (idle_reported)
        return;
    idle_reported = 1;
    printf("{\"mode\":\"idle\",\"complete\":%s,\"conns\":%d,\"connected\":%d,\"failed\":%d,",
           idle_connected == cfg.conns ? "true" : "false", cfg.conns, idle_connected,
           idle_failed);
    printf("\"connect_time_s\":%.3f,", (now - t_begin) / 1e9);
    print_common(now);
    if (!g_error[0] && idle_connected != cfg.conns)
        snprintf(g_error, sizeof g_error, "only %d of %d connections established",
                 idle_connected, cfg.conns);
    print_error_field();
    fflush(stdout);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(const int64_t *v, size_t n, double q)
{
    if (!n)
        return 0.0;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    if (i >= n)
        i = n - 1;
    return v[i] / 1000.0; /* microseconds */
}

static void print_lat_stats(const char *name, int64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_i64);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)v[i];
    printf("\"%s\":{\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
           "\"max_us\":%.1f,\"mean_us\":%.1f},",
           name, pct(v, n, 0.5), pct(v, n, 0.9), pct(v, n, 0.99), pct(v, n, 0.999),
           n ? v[n - 1] / 1000.0 : 0.0, n ? sum / (double)n / 1000.0 : 0.0);
}

static void print_result(int64_t now)
{
    const char *complete = g_error[0] ? "false" : "true";
    switch (cfg.mode) {
    case M_FANIN:
    case M_FANOUT: {
        if (!t_win_end) { /* never reached the end of the window */
            t_win_end = now;
            snap_recv1 = total_recv();
            snap_sent1 = total_sent();
            getrusage(RUSAGE_SELF, &ru_win_end);
            if (!win_started) {
                t_win_start = now;
                snap_recv0 = snap_recv1;
                snap_sent0 = snap_sent1;
                ru_win_start = ru_win_end;
            }
        }
        double win = (t_win_end - t_win_start) / 1e9;
        uint64_t recv = snap_recv1 - snap_recv0, sent = snap_sent1 - snap_sent0;
        double wcpu = ru_cpu(&ru_win_end) - ru_cpu(&ru_win_start);
        printf("{\"mode\":\"%s\",\"complete\":%s,\"qos\":%d,\"pubs\":%d,\"subs\":%d,"
               "\"size\":%d,\"window\":%d,\"max_backlog\":%ld,\"lost\":%llu,\"bad\":%llu,",
               cfg.mode_name, complete, cfg.qos, g_npubs, g_nsubs, cfg.size, cfg.window,
               cfg.qos == 0 ? cfg.max_backlog : 0L, (unsigned long long)g_lost,
               (unsigned long long)g_bad);
        printf("\"measure_s\":%.3f,\"received\":%llu,\"rate\":%.1f,\"sent\":%llu,"
               "\"sent_rate\":%.1f,\"total_received\":%llu,\"total_sent\":%llu,",
               win, (unsigned long long)recv, win > 0 ? recv / win : 0.0,
               (unsigned long long)sent, win > 0 ? sent / win : 0.0,
               (unsigned long long)total_recv(), (unsigned long long)total_sent());
        printf("\"lg_window_cpu_s\":%.3f,\"lg_window_cpu_pct\":%.1f,", wcpu,
               win > 0 ? 100.0 * wcpu / win : 0.0);
        break;
    }
    case M_LATENCY: {
        conn_t *p = g_pubs[0];
        double run = t_run ? (now - t_run) / 1e9 : 0.0;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("{\"mode\":\"latency\",\"complete\":%s,\"qos\":%d,\"rate\":%.1f,\"size\":%d,"
               "\"sent\":%llu,\"acked\":%llu,\"received\":%llu,\"samples\":%zu,",
               complete, cfg.qos, cfg.rate, cfg.size, (unsigned long long)p->sent,
               (unsigned long long)p->acked, (unsigned long long)lat_recv_total, lat_n);
        print_lat_stats("latency", lat_send, lat_n);
        print_lat_stats("latency_from_schedule", lat_sched, lat_n);
        double pub_s = t_pub_end ? (t_pub_end - t_run) / 1e9 : run;
        printf("\"run_s\":%.3f,\"publish_s\":%.3f,\"publish_rate\":%.1f,", run, pub_s,
               pub_s > 0 ? p->sent / pub_s : 0.0);
        break;
    }
    case M_RETAINED: {
        conn_t *s = g_subs[0];
        double pub_s = t_ret_pub_done ? (t_ret_pub_done - t_ret_pub_start) / 1e9 : 0.0;
        double del_s = t_ret_done ? (t_ret_done - t_ret_sub) / 1e9 : 0.0;
        double first_s = t_ret_first ? (t_ret_first - t_ret_sub) / 1e9 : 0.0;
        printf("{\"mode\":\"retained\",\"complete\":%s,\"count\":%ld,\"size\":%d,\"qos\":%d,",
               complete, cfg.count, cfg.size, cfg.qos);
        printf("\"published\":%llu,\"publish_s\":%.3f,\"publish_rate\":%.1f,",
               (unsigned long long)g_pubs[0]->acked, pub_s,
               pub_s > 0 ? g_pubs[0]->acked / pub_s : 0.0);
        printf("\"received\":%llu,\"first_s\":%.4f,\"deliver_s\":%.4f,\"deliver_rate\":%.1f,",
               (unsigned long long)s->recv_retained, first_s, del_s,
               del_s > 0 ? cfg.count / del_s : 0.0);
        break;
    }
    default:
        return;
    }
    print_common(now);
    print_error_field();
    fflush(stdout);
}

/* ---------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen MODE [options]\n"
            "modes: fanin fanout latency idle retained\n"
            "  --host H          broker host (127.0.0.1)\n"
            "  --port N          broker port (1883)\n"
            "  --qos N           0 or 1 (fanin/fanout: 0, latency/retained: 1)\n"
            "  --pubs N          fanin publishers (4)\n"
            "  --subs N          fanout subscribers (20)\n"
            "  --size N          payload bytes (64)\n"
            "  --duration S      measured seconds (5); idle: hold time after connecting,\n"
            "                    0 = until stdin EOF or SIGTERM (at most --timeout)\n"
            "  --warmup S        unmeasured seconds before the window (1)\n"
            "  --window N        QoS 1 in-flight messages per publisher (64)\n"
            "  --rate R          latency mode publish rate, msg/s (2000)\n"
            "  --count N         fanin/fanout: stop after N received; retained: R (10000)\n"
            "  --conns N         idle connections (1000)\n"
            "  --concurrency N   idle: connection attempts in flight (64)\n"
            "  --keepalive S     CONNECT keep-alive seconds (60)\n"
            "  --timeout S       hard limit for the run (duration + warmup + 30; 120 for\n"
            "                    idle and retained)\n"
            "  --prefix P        topic prefix (bench/<pid>)\n"
            "  --max-backlog N   fanin/fanout QoS 0: publishers pause while more than N\n"
            "                    messages are not yet received (10000; 0 = open loop)\n"
            "  --stall S         retained: give up after S seconds without progress (10)\n"
            "  --coalesce-us N   fanin/fanout QoS 0: pause N us after an iteration that read\n"
            "                    little, so reads come in large batches (500; 0 = off)\n"
            "  --topics N        fanin QoS 0: each publisher cycles over N topics\n"
            "                    <prefix>/fanin/<i>.<k> instead of using <prefix>/fanin/<i> (1)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    cfg.mode_name = argv[1];
    if (!strcmp(argv[1], "fanin"))
        cfg.mode = M_FANIN;
    else if (!strcmp(argv[1], "fanout"))
        cfg.mode = M_FANOUT;
    else if (!strcmp(argv[1], "latency"))
        cfg.mode = M_LATENCY;
    else if (!strcmp(argv[1], "idle"))
        cfg.mode = M_IDLE;
    else if (!strcmp(argv[1], "retained"))
        cfg.mode = M_RETAINED;
    else
        usage();
    if (cfg.mode == M_LATENCY || cfg.mode == M_RETAINED)
        cfg.qos = 1;
    if (cfg.mode == M_RETAINED)
        cfg.count = 10000;
    if (cfg.mode == M_IDLE)
        cfg.duration = 0;

    static const struct option opts[] = {
        {"host", 1, 0, 'h'},     {"port", 1, 0, 'p'},      {"qos", 1, 0, 'q'},
        {"pubs", 1, 0, 'P'},     {"subs", 1, 0, 'S'},      {"size", 1, 0, 's'},
        {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'},    {"window", 1, 0, 'W'},
        {"rate", 1, 0, 'r'},     {"count", 1, 0, 'n'},     {"conns", 1, 0, 'c'},
        {"timeout", 1, 0, 't'},  {"keepalive", 1, 0, 'k'}, {"prefix", 1, 0, 'x'},
        {"concurrency", 1, 0, 'C'}, {"coalesce-us", 1, 0, 'u'},
        {"max-backlog", 1, 0, 'B'}, {"stall", 1, 0, 'T'}, {"topics", 1, 0, 'o'},
        {0, 0, 0, 0},
    };
    int o;
    optind = 2;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': cfg.host = optarg; break;
        case 'p': cfg.port = optarg; break;
        case 'q': cfg.qos = atoi(optarg); break;
        case 'P': cfg.pubs = atoi(optarg); break;
        case 'S': cfg.subs = atoi(optarg); break;
        case 's': cfg.size = atoi(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 'W': cfg.window = atoi(optarg); break;
        case 'r': cfg.rate = atof(optarg); break;
        case 'n': cfg.count = atol(optarg); break;
        case 'c': cfg.conns = atoi(optarg); break;
        case 't': cfg.timeout = atof(optarg); break;
        case 'k': cfg.keepalive = atoi(optarg); break;
        case 'x': cfg.prefix = optarg; break;
        case 'C': cfg.concurrency = atoi(optarg); break;
        case 'u': cfg.coalesce_us = atoi(optarg); break;
        case 'B': cfg.max_backlog = atol(optarg); break;
        case 'T': cfg.stall = atof(optarg); break;
        case 'o': cfg.topics = atoi(optarg); break;
        default: usage();
        }
    }
    if (cfg.qos < 0 || cfg.qos > 1 || cfg.pubs < 1 || cfg.subs < 1 || cfg.size < 0 ||
        cfg.window < 1 || cfg.rate <= 0 || cfg.conns < 1 || cfg.concurrency < 1 ||
        cfg.window > 65000)
        usage();
    if (cfg.mode == M_RETAINED && cfg.count < 1)
        usage();
    if (cfg.topics < 1 || cfg.topics > 999999 ||
        (cfg.topics > 1 && (cfg.mode != M_FANIN || cfg.qos != 0)))
        usage();
    static char prefix_buf[64];
    if (!cfg.prefix) {
        snprintf(prefix_buf, sizeof prefix_buf, "bench/%d", (int)getpid());
        cfg.prefix = prefix_buf;
    }
    if (cfg.coalesce_us < 0)
        cfg.coalesce_us = (cfg.mode == M_FANIN || cfg.mode == M_FANOUT) && cfg.qos == 0 ? 500 : 0;
    if (cfg.timeout <= 0) {
        if (cfg.mode == M_IDLE || cfg.mode == M_RETAINED)
            cfg.timeout = 120;
        else
            cfg.timeout = cfg.warmup + cfg.duration + 30;
    }

    /* room for many sockets */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct addrinfo hints = {0}, *res;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(cfg.host, cfg.port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "loadgen: %s: %s\n", cfg.host, gai_strerror(gai));
        return 2;
    }
    memcpy(&g_addr, res->ai_addr, res->ai_addrlen);
    g_addrlen = res->ai_addrlen;
    freeaddrinfo(res);

    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0)
        die("epoll_create1");
    t_begin = now_ns();
    t_deadline = t_begin + (int64_t)(cfg.timeout * 1e9);
    getrusage(RUSAGE_SELF, &ru_begin);

    if (cfg.mode == M_IDLE) { /* stdin EOF ends the hold */
        g_stdin_conn.fd = 0;
        g_stdin_conn.role = R_STDIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &g_stdin_conn};
        epoll_ctl(g_ep, EPOLL_CTL_ADD, 0, &ev); /* fails harmlessly for /dev/null */
    }
    setup();

    struct epoll_event evs[MAX_EVENTS];
    int64_t now = now_ns();
    tick(now);
    while (g_phase != P_DONE) {
        int timeout_ms = g_phase == P_HOLD ? 200 : 10;
        g_iter_bytes = 0;
        int n = epoll_wait(g_ep, evs, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        now = now_ns();
        for (int i = 0; i < n && g_phase != P_DONE; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->role == R_TIMER) {
                uint64_t exp;
                if (read(g_tfd, &exp, sizeof exp) < 0 && errno != EAGAIN)
                    die("timerfd read");
                pump_latency(g_pubs[0], now_ns());
            } else if (c->role == R_STDIN) {
                char buf[256];
                ssize_t r = read(0, buf, sizeof buf);
                if (r <= 0) {
                    epoll_ctl(g_ep, EPOLL_CTL_DEL, 0, NULL);
                    if (g_phase == P_HOLD)
                        g_phase = P_DONE;
                    else
                        g_signalled = 1; /* stop once connected */
                }
            } else {
                conn_event(c, evs[i].events, now);
            }
        }
        tick(now_ns());
        /* QoS 0 throughput runs have no acknowledgement round trip, so the reader can
         * let data pile up in the socket buffers instead of waking per packet. */
        if (cfg.coalesce_us > 0 && g_phase == P_RUN && n > 0 && g_iter_bytes < 64 * 1024) {
            struct timespec ts = {0, cfg.coalesce_us * 1000L};
            nanosleep(&ts, NULL);
        }
    }
    now = now_ns();
    if (cfg.mode == M_IDLE) {
        print_idle_result(now);
        if (idle_dropped)
            fprintf(stderr, "loadgen: %d idle connections were closed by the broker\n",
                    idle_dropped);
    } else
        print_result(now);

    for (int i = 0; i < g_nconns; i++)
        if (g_conns[i])
            conn_close(g_conns[i]);
    return g_error[0] ? 1 : 0;
}
