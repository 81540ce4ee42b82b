/*
 * tlsconnect.c - mutual-TLS connection set-up rate, for the lichen benchmark suite.
 *
 * Every cycle is what a device does when it (re)connects: TCP connect, a full TLS
 * handshake presenting a client certificate (no session resumption: the session cache is
 * off and tickets are never reused), MQTT 3.1.1 CONNECT (clean session, client id = the
 * certificate's identity), wait for CONNACK, send DISCONNECT, and wait until the broker
 * closes the connection.  C slots run such cycles back to back, so C connections are being
 * set up at any time; slot j always uses identity j % N, so with N >= C no two live
 * connections share a client id.
 *
 * Identities are files DIR/<prefix><i>.crt and DIR/<prefix><i>.key (PEM).  The broker's
 * certificate is verified against --cafile (chain and IP/host name), as a device would,
 * unless --no-verify.
 *
 * The work is split over --procs worker processes (fork); the parent adds up their
 * results and prints one JSON line on stdout, with the workers' own CPU time so the caller
 * can check the generator was not the bottleneck.
 *
 * Build: gcc -O2 -Wall -o tlsconnect tlsconnect.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define MAX_EVENTS 256
#define RETRY_NS (20 * 1000000LL)     /* pause of a slot after a failed cycle */
#define MAX_SAMPLES (2 * 1000 * 1000) /* latency samples kept per worker */

/* ----------------------------------------------------------------- config */

static struct {
    const char *host;
    const char *port;
    const char *cafile;
    const char *cert_dir;
    const char *prefix;
    int ids;
    int concurrency;
    int procs;
    double duration;
    double warmup;
    double timeout;
    double cycle_timeout;
    double drain;
    int keepalive;
    int verify;
    int tls_max; /* 0, 12 or 13 */
} cfg = {
    .host = "127.0.0.1",
    .port = "8883",
    .cafile = NULL,
    .cert_dir = NULL,
    .prefix = "bench-dev-",
    .ids = 0,
    .concurrency = 0,
    .procs = 1,
    .duration = 5.0,
    .warmup = 1.0,
    .timeout = 0.0,
    .cycle_timeout = 10.0,
    .drain = 3.0,
    .keepalive = 60,
    .verify = 1,
    .tls_max = 0,
};

/* ------------------------------------------------------------------ types */

enum state { S_IDLE, S_TCP, S_HANDSHAKE, S_CONNACK, S_CLOSING };
enum fail { F_TCP, F_TLS, F_REFUSED, F_EOF, F_TIMEOUT, F_NFAIL };
static const char *fail_names[F_NFAIL] = {"tcp", "tls", "connack_refused", "closed_early",
                                          "timeout"};

typedef struct slot {
    int idx;
    int ident;
    int fd;
    int state;
    uint32_t events;
    SSL *ssl;
    int64_t t_start, t_tcp, t_hs, t_connack, t_next;
    uint8_t in[64];
    size_t in_len;
    int wrote_connect;
} slot_t;

/* What a worker sends its parent: the counters, then `samples` int64 triples
 * (handshake, connack, cycle) in ns. */
typedef struct {
    uint64_t completed;      /* cycles finished inside the measured window */
    uint64_t completed_all;  /* cycles finished at any time */
    uint64_t started;
    uint64_t failures[F_NFAIL];
    uint64_t close_timeouts; /* broker never closed after DISCONNECT (cycle still counted) */
    double win_cpu_s, all_cpu_s, win_s, all_s;
    char version[32], cipher[64], group[32], error[200];
    uint64_t samples;
} wresult_t;

/* ------------------------------------------------------------------ state */

static int g_ep = -1;
static struct sockaddr_storage g_addr;
static socklen_t g_addrlen;
static SSL_CTX **g_ctx; /* one per identity: its certificate and key */
static char **g_names;
static slot_t *g_slots;
static int g_nslots;
static int64_t t_begin, t_win_start, t_win_end, t_stop, t_deadline;
static int g_stopping;
static wresult_t R;
static int64_t *g_lat; /* triples */
static uint64_t g_nlat;
static volatile sig_atomic_t g_signalled;
static int g_is_ip;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_now(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec +
           r.ru_stime.tv_usec / 1e6;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tlsconnect: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void note_error(const char *fmt, ...)
{
    if (R.error[0])
        return; /* keep the first one */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(R.error, sizeof R.error, fmt, ap);
    va_end(ap);
}

static void on_signal(int sig)
{
    (void)sig;
    g_signalled = 1;
}

/* ------------------------------------------------------------------ TLS */

static SSL_CTX *make_ctx(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        die("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (cfg.tls_max == 12)
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    else if (cfg.tls_max == 13)
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    /* every handshake is a full one */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    if (cfg.verify) {
        if (!cfg.cafile)
            die("--cafile is required unless --no-verify");
        if (SSL_CTX_load_verify_locations(ctx, cfg.cafile, NULL) != 1)
            die("cannot load CA file %s", cfg.cafile);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        die("cannot load certificate %s", cert);
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        die("cannot load key %s", key);
    if (SSL_CTX_check_private_key(ctx) != 1)
        die("key %s does not match %s", key, cert);
    return ctx;
}

static void ssl_error_text(char *buf, size_t n)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, n);
    else
        snprintf(buf, n, "%s", errno ? strerror(errno) : "connection closed");
    ERR_clear_error();
}

/* ---------------------------------------------------------------- slots */

static void ep_set(slot_t *s, uint32_t events)
{
    if (s->fd < 0 || s->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = s};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, s->fd, &ev) == 0)
        s->events = events;
}

static void slot_reset(slot_t *s, int64_t next)
{
    if (s->ssl) {
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    if (s->fd >= 0) {
        epoll_ctl(g_ep, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
    s->state = S_IDLE;
    s->in_len = 0;
    s->wrote_connect = 0;
    s->t_next = next;
}

static void slot_fail(slot_t *s, int kind, const char *why, int64_t now)
{
    R.failures[kind]++;
    note_error("%s (%s, client %s)", why, fail_names[kind], g_names[s->ident]);
    slot_reset(s, now + RETRY_NS);
}

static void slot_done(slot_t *s, int64_t now)
{
    R.completed_all++;
    if (now >= t_win_start && now < t_win_end) {
        R.completed++;
        if (g_nlat < MAX_SAMPLES) {
            int64_t *p = g_lat + 3 * g_nlat++;
            p[0] = s->t_hs - s->t_start;
            p[1] = s->t_connack - s->t_start;
            p[2] = now - s->t_start;
        }
    }
    slot_reset(s, now);
}

static void slot_start(slot_t *s, int64_t now)
{
    int fd = socket(g_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->t_start = now;
    s->t_tcp = s->t_hs = s->t_connack = 0;
    R.started++;
    if (connect(fd, (struct sockaddr *)&g_addr, g_addrlen) < 0 && errno != EINPROGRESS) {
        char why[128];
        snprintf(why, sizeof why, "connect: %s", strerror(errno));
        close(fd);
        slot_fail(s, F_TCP, why, now);
        return;
    }
    s->fd = fd;
    s->state = S_TCP;
    s->events = EPOLLOUT;
    struct epoll_event ev = {.events = s->events, .data.ptr = s};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl ADD: %s", strerror(errno));
}

static size_t build_connect(uint8_t *p, const char *client_id)
{
    size_t idl = strlen(client_id);
    uint32_t rem = 10 + 2 + (uint32_t)idl;
    size_t n = 0;
    p[n++] = 0x10;
    do { /* remaining length */
        uint8_t b = rem % 128;
        rem /= 128;
        p[n++] = rem ? (uint8_t)(b | 0x80) : b;
    } while (rem);
    const uint8_t head[] = {0, 4, 'M', 'Q', 'T', 'T', 4, 0x02,
                            (uint8_t)(cfg.keepalive >> 8), (uint8_t)cfg.keepalive};
    memcpy(p + n, head, sizeof head);
    n += sizeof head;
    p[n++] = (uint8_t)(idl >> 8);
    p[n++] = (uint8_t)idl;
    memcpy(p + n, client_id, idl);
    return n + idl;
}

/* Drives one slot as far as it can go without blocking. */
static void slot_step(slot_t *s, int64_t now)
{
    char why[256];
    if (s->state == S_TCP) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            snprintf(why, sizeof why, "connect: %s", strerror(err));
            slot_fail(s, F_TCP, why, now);
            return;
        }
        s->t_tcp = now;
        s->ssl = SSL_new(g_ctx[s->ident]);
        if (!s->ssl)
            die("SSL_new failed");
        if (cfg.verify) {
            X509_VERIFY_PARAM *param = SSL_get0_param(s->ssl);
            if (g_is_ip)
                X509_VERIFY_PARAM_set1_ip_asc(param, cfg.host);
            else
                X509_VERIFY_PARAM_set1_host(param, cfg.host, 0);
        }
        SSL_set_fd(s->ssl, s->fd);
        SSL_set_connect_state(s->ssl);
        s->state = S_HANDSHAKE;
    }
    if (s->state == S_HANDSHAKE) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_do_handshake(s->ssl);
        if (r != 1) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                ep_set(s, EPOLLIN);
                return;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                ep_set(s, EPOLLOUT);
                return;
            }
            char err[200];
            ssl_error_text(err, sizeof err);
            snprintf(why, sizeof why, "TLS handshake: %s", err);
            slot_fail(s, F_TLS, why, now);
            return;
        }
        s->t_hs = now;
        if (!R.version[0]) {
            snprintf(R.version, sizeof R.version, "%s", SSL_get_version(s->ssl));
            snprintf(R.cipher, sizeof R.cipher, "%s", SSL_get_cipher_name(s->ssl));
            int nid = SSL_get_negotiated_group(s->ssl);
            const char *g = nid > 0 ? OBJ_nid2sn(nid & ~TLSEXT_nid_unknown) : NULL;
            snprintf(R.group, sizeof R.group, "%s", g ? g : "?");
        }
        uint8_t pkt[128];
        size_t n = build_connect(pkt, g_names[s->ident]);
        int w = SSL_write(s->ssl, pkt, (int)n); /* tiny: fits an empty record buffer */
        if (w != (int)n) {
            char err[200];
            ssl_error_text(err, sizeof err);
            snprintf(why, sizeof why, "writing CONNECT: %s", err);
            slot_fail(s, F_EOF, why, now);
            return;
        }
        s->state = S_CONNACK;
        ep_set(s, EPOLLIN);
    }
    while (s->state == S_CONNACK || s->state == S_CLOSING) {
        uint8_t buf[4096];
        ERR_clear_error();
        errno = 0;
        int r = SSL_read(s->ssl, buf, sizeof buf);
        if (r <= 0) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                ep_set(s, EPOLLIN);
                return;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                ep_set(s, EPOLLOUT);
                return;
            }
            if (s->state == S_CLOSING) { /* close_notify, EOF or reset: the broker closed */
                slot_done(s, now);
                return;
            }
            char err[200];
            ssl_error_text(err, sizeof err);
            snprintf(why, sizeof why, "before CONNACK: %s", err);
            slot_fail(s, F_EOF, why, now);
            return;
        }
        if (s->state == S_CLOSING)
            continue; /* nothing expected; ignore */
        size_t take = (size_t)r;
        if (take > sizeof s->in - s->in_len)
            take = sizeof s->in - s->in_len;
        memcpy(s->in + s->in_len, buf, take);
        s->in_len += take;
        if (s->in_len < 4)
            continue;
        if (s->in[0] != 0x20 || s->in[1] != 0x02) {
            snprintf(why, sizeof why, "expected CONNACK, got packet type 0x%02x", s->in[0]);
            slot_fail(s, F_REFUSED, why, now);
            return;
        }
        if (s->in[3] != 0) {
            snprintf(why, sizeof why, "CONNACK return code %d", s->in[3]);
            slot_fail(s, F_REFUSED, why, now);
            return;
        }
        s->t_connack = now;
        static const uint8_t disc[2] = {0xE0, 0x00};
        if (SSL_write(s->ssl, disc, 2) != 2) {
            /* the broker may already be gone; the cycle has done its work */
            slot_done(s, now);
            return;
        }
        s->state = S_CLOSING;
    }
}

static void tick(int64_t now)
{
    for (int i = 0; i < g_nslots; i++) {
        slot_t *s = &g_slots[i];
        if (s->state == S_IDLE) {
            if (!g_stopping && now >= s->t_next)
                slot_start(s, now);
            continue;
        }
        if (now - s->t_start > (int64_t)(cfg.cycle_timeout * 1e9)) {
            if (s->state == S_CLOSING) { /* DISCONNECT sent but the broker never closed */
                R.close_timeouts++;
                slot_done(s, now);
            } else {
                char why[64];
                static const char *names[] = {"idle", "TCP connect", "TLS handshake",
                                              "CONNACK", "close"};
                snprintf(why, sizeof why, "no progress in %s within %.0f s", names[s->state],
                         cfg.cycle_timeout);
                slot_fail(s, F_TIMEOUT, why, now);
            }
        }
    }
}

static int busy(void)
{
    for (int i = 0; i < g_nslots; i++)
        if (g_slots[i].state != S_IDLE)
            return 1;
    return 0;
}

/* One worker: runs slots w, w + procs, w + 2 procs, ... and writes its result to fd. */
static void worker(int w, int out_fd)
{
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0)
        die("epoll_create1");
    g_nslots = 0;
    g_slots = calloc((size_t)cfg.concurrency, sizeof *g_slots);
    g_lat = malloc(sizeof(int64_t) * 3 * MAX_SAMPLES);
    if (!g_slots || !g_lat)
        die("out of memory");
    for (int j = w; j < cfg.concurrency; j += cfg.procs) {
        slot_t *s = &g_slots[g_nslots++];
        s->idx = j;
        s->ident = j % cfg.ids;
        s->fd = -1;
        s->state = S_IDLE;
        s->t_next = t_begin;
    }
    double cpu0 = cpu_now(), cpu_w0 = cpu0, cpu_w1 = -1;
    int in_window = 0;
    struct epoll_event evs[MAX_EVENTS];
    int64_t now = now_ns();
    while (!g_signalled) {
        now = now_ns();
        if (!in_window && now >= t_win_start) {
            in_window = 1;
            cpu_w0 = cpu_now();
        }
        if (cpu_w1 < 0 && now >= t_win_end) {
            cpu_w1 = cpu_now();
            g_stopping = 1; /* let the cycles in progress finish, start no more */
        }
        if (g_stopping && (!busy() || now >= t_stop))
            break;
        if (now >= t_deadline) {
            note_error("run exceeded --timeout");
            break;
        }
        tick(now);
        int n = epoll_wait(g_ep, evs, MAX_EVENTS, 5);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        now = now_ns();
        for (int i = 0; i < n; i++) {
            slot_t *s = evs[i].data.ptr;
            if (s->state != S_IDLE)
                slot_step(s, now);
        }
    }
    now = now_ns();
    if (cpu_w1 < 0)
        cpu_w1 = cpu_now();
    if (!in_window)
        cpu_w0 = cpu_w1;
    R.win_cpu_s = cpu_w1 - cpu_w0;
    R.all_cpu_s = cpu_now() - cpu0;
    R.win_s = (double)(t_win_end - t_win_start) / 1e9;
    R.all_s = (double)(now - t_begin) / 1e9;
    R.samples = g_nlat;
    for (int i = 0; i < g_nslots; i++)
        slot_reset(&g_slots[i], 0);
    /* the pipe may be smaller than the samples: write it all */
    const uint8_t *parts[2] = {(const uint8_t *)&R, (const uint8_t *)g_lat};
    size_t lens[2] = {sizeof R, sizeof(int64_t) * 3 * g_nlat};
    for (int k = 0; k < 2; k++) {
        size_t off = 0;
        while (off < lens[k]) {
            ssize_t m = write(out_fd, parts[k] + off, lens[k] - off);
            if (m < 0 && errno == EINTR)
                continue;
            if (m <= 0)
                die("writing results: %s", strerror(errno));
            off += (size_t)m;
        }
    }
    close(out_fd);
}

/* --------------------------------------------------------------- results */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void print_pcts(const char *name, int64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_i64);
    double q[4] = {0.5, 0.9, 0.99, 1.0};
    const char *k[4] = {"p50_ms", "p90_ms", "p99_ms", "max_ms"};
    printf("\"%s\":{", name);
    for (int i = 0; i < 4; i++) {
        size_t j = n ? (size_t)(q[i] * (double)(n - 1) + 0.5) : 0;
        printf("%s\"%s\":%.3f", i ? "," : "", k[i], n ? v[j] / 1e6 : 0.0);
    }
    printf("},");
}

static int read_all(int fd, void *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t m = read(fd, (uint8_t *)buf + off, len - off);
        if (m < 0 && errno == EINTR)
            continue;
        if (m <= 0)
            return -1;
        off += (size_t)m;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: tlsconnect --port N --cert-dir DIR --ids N [options]\n"
            "  --host H          broker address (127.0.0.1)\n"
            "  --port N          TLS port (8883)\n"
            "  --cafile F        CA to verify the broker's certificate with\n"
            "  --no-verify       do not verify the broker's certificate\n"
            "  --cert-dir DIR    DIR/<prefix><i>.crt and .key for i < --ids\n"
            "  --prefix P        identity / client id prefix (bench-dev-)\n"
            "  --ids N           number of identities\n"
            "  --concurrency C   cycles in progress at a time (default: --ids)\n"
            "  --procs P         worker processes (1)\n"
            "  --duration S      measured seconds (5)\n"
            "  --warmup S        unmeasured seconds first (1)\n"
            "  --drain S         after the window, wait at most S s for open cycles (3)\n"
            "  --cycle-timeout S give up on one cycle after S s (10)\n"
            "  --timeout S       hard limit (warmup + duration + drain + 30)\n"
            "  --tls-max V       12: TLS 1.2 only, 13: TLS 1.3 only (default: either)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"host", 1, 0, 'h'},        {"port", 1, 0, 'p'},      {"cafile", 1, 0, 'a'},
        {"cert-dir", 1, 0, 'D'},    {"prefix", 1, 0, 'x'},    {"ids", 1, 0, 'n'},
        {"concurrency", 1, 0, 'C'}, {"procs", 1, 0, 'P'},     {"duration", 1, 0, 'd'},
        {"warmup", 1, 0, 'w'},      {"timeout", 1, 0, 't'},   {"cycle-timeout", 1, 0, 'c'},
        {"drain", 1, 0, 'r'},       {"no-verify", 0, 0, 'N'}, {"tls-max", 1, 0, 'V'},
        {"keepalive", 1, 0, 'k'},   {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': cfg.host = optarg; break;
        case 'p': cfg.port = optarg; break;
        case 'a': cfg.cafile = optarg; break;
        case 'D': cfg.cert_dir = optarg; break;
        case 'x': cfg.prefix = optarg; break;
        case 'n': cfg.ids = atoi(optarg); break;
        case 'C': cfg.concurrency = atoi(optarg); break;
        case 'P': cfg.procs = atoi(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 't': cfg.timeout = atof(optarg); break;
        case 'c': cfg.cycle_timeout = atof(optarg); break;
        case 'r': cfg.drain = atof(optarg); break;
        case 'N': cfg.verify = 0; break;
        case 'V': cfg.tls_max = atoi(optarg); break;
        case 'k': cfg.keepalive = atoi(optarg); break;
        default: usage();
        }
    }
    if (!cfg.cert_dir || cfg.ids < 1 || cfg.procs < 1 || cfg.duration <= 0 || cfg.warmup < 0)
        usage();
    if (cfg.tls_max && cfg.tls_max != 12 && cfg.tls_max != 13)
        usage();
    if (cfg.concurrency <= 0)
        cfg.concurrency = cfg.ids;
    if (cfg.procs > cfg.concurrency)
        cfg.procs = cfg.concurrency;
    if (cfg.timeout <= 0)
        cfg.timeout = cfg.warmup + cfg.duration + cfg.drain + 30;

    struct in6_addr a6;
    g_is_ip = inet_pton(AF_INET, cfg.host, &a6) == 1 || inet_pton(AF_INET6, cfg.host, &a6) == 1;
    struct addrinfo hints = {0}, *res;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(cfg.host, cfg.port, &hints, &res);
    if (gai != 0)
        die("%s: %s", cfg.host, gai_strerror(gai));
    memcpy(&g_addr, res->ai_addr, res->ai_addrlen);
    g_addrlen = res->ai_addrlen;
    freeaddrinfo(res);

    g_ctx = calloc((size_t)cfg.ids, sizeof *g_ctx);
    g_names = calloc((size_t)cfg.ids, sizeof *g_names);
    for (int i = 0; i < cfg.ids; i++) {
        char cert[4096], key[4096], name[256];
        snprintf(name, sizeof name, "%s%d", cfg.prefix, i);
        snprintf(cert, sizeof cert, "%s/%s.crt", cfg.cert_dir, name);
        snprintf(key, sizeof key, "%s/%s.key", cfg.cert_dir, name);
        g_names[i] = strdup(name);
        g_ctx[i] = make_ctx(cert, key);
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    t_begin = now_ns();
    t_win_start = t_begin + (int64_t)(cfg.warmup * 1e9);
    t_win_end = t_win_start + (int64_t)(cfg.duration * 1e9);
    t_stop = t_win_end + (int64_t)(cfg.drain * 1e9);
    t_deadline = t_begin + (int64_t)(cfg.timeout * 1e9);

    pid_t *pids = calloc((size_t)cfg.procs, sizeof *pids);
    int *fds = calloc((size_t)cfg.procs, sizeof *fds);
    for (int w = 0; w < cfg.procs; w++) {
        int p[2];
        if (pipe(p) < 0)
            die("pipe: %s", strerror(errno));
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            close(p[0]);
            worker(w, p[1]);
            _exit(0);
        }
        close(p[1]);
        pids[w] = pid;
        fds[w] = p[0];
    }

    /* add up the workers' results */
    wresult_t T = {0};
    int64_t *lat[3];
    size_t nlat = 0, cap = 1024;
    for (int k = 0; k < 3; k++)
        lat[k] = malloc(sizeof(int64_t) * cap);
    int workers_ok = 0;
    for (int w = 0; w < cfg.procs; w++) {
        wresult_t r;
        if (read_all(fds[w], &r, sizeof r) < 0) {
            if (!T.error[0])
                snprintf(T.error, sizeof T.error, "worker %d reported nothing", w);
            continue;
        }
        workers_ok++;
        T.completed += r.completed;
        T.completed_all += r.completed_all;
        T.started += r.started;
        for (int k = 0; k < F_NFAIL; k++)
            T.failures[k] += r.failures[k];
        T.close_timeouts += r.close_timeouts;
        T.win_cpu_s += r.win_cpu_s;
        T.all_cpu_s += r.all_cpu_s;
        if (r.win_s > T.win_s)
            T.win_s = r.win_s;
        if (r.all_s > T.all_s)
            T.all_s = r.all_s;
        if (!T.version[0] && r.version[0]) {
            memcpy(T.version, r.version, sizeof T.version);
            memcpy(T.cipher, r.cipher, sizeof T.cipher);
            memcpy(T.group, r.group, sizeof T.group);
        }
        if (!T.error[0] && r.error[0])
            memcpy(T.error, r.error, sizeof T.error);
        for (uint64_t i = 0; i < r.samples; i++) {
            int64_t t[3];
            if (read_all(fds[w], t, sizeof t) < 0)
                break;
            if (nlat == cap) {
                cap *= 2;
                for (int k = 0; k < 3; k++)
                    lat[k] = realloc(lat[k], sizeof(int64_t) * cap);
            }
            for (int k = 0; k < 3; k++)
                lat[k][nlat] = t[k];
            nlat++;
        }
        close(fds[w]);
    }
    for (int w = 0; w < cfg.procs; w++)
        waitpid(pids[w], NULL, 0);

    uint64_t failed = 0;
    for (int k = 0; k < F_NFAIL; k++)
        failed += T.failures[k];
    /* complete: every worker reported, work was done, and failures are rare */
    int complete = workers_ok == cfg.procs && T.completed > 0 &&
                   failed * 100 <= T.completed_all;
    printf("{\"mode\":\"tls_connect\",\"complete\":%s,\"concurrency\":%d,\"ids\":%d,"
           "\"procs\":%d,\"verify_server\":%s,",
           complete ? "true" : "false", cfg.concurrency, cfg.ids, cfg.procs,
           cfg.verify ? "true" : "false");
    printf("\"tls_version\":\"%s\",\"cipher\":\"%s\",\"group\":\"%s\",", T.version, T.cipher,
           T.group);
    printf("\"measure_s\":%.3f,\"completed\":%llu,\"rate\":%.1f,\"completed_all\":%llu,"
           "\"started\":%llu,\"failed\":%llu,\"close_timeouts\":%llu,",
           T.win_s, (unsigned long long)T.completed, T.win_s > 0 ? T.completed / T.win_s : 0.0,
           (unsigned long long)T.completed_all, (unsigned long long)T.started,
           (unsigned long long)failed, (unsigned long long)T.close_timeouts);
    printf("\"failures\":{");
    for (int k = 0; k < F_NFAIL; k++)
        printf("%s\"%s\":%llu", k ? "," : "", fail_names[k], (unsigned long long)T.failures[k]);
    printf("},");
    print_pcts("handshake", lat[0], nlat);
    print_pcts("to_connack", lat[1], nlat);
    print_pcts("cycle", lat[2], nlat);
    printf("\"lg_window_cpu_s\":%.3f,\"lg_window_cpu_pct\":%.1f,\"lg_cpu_s\":%.3f,"
           "\"lg_wall_s\":%.3f,\"lg_cpu_pct\":%.1f,\"lg_cpu_ms_per_conn\":%.3f,",
           T.win_cpu_s, T.win_s > 0 ? 100.0 * T.win_cpu_s / T.win_s : 0.0, T.all_cpu_s,
           T.all_s, T.all_s > 0 ? 100.0 * T.all_cpu_s / T.all_s : 0.0,
           T.completed_all ? 1e3 * T.all_cpu_s / (double)T.completed_all : 0.0);
    if (!complete && !T.error[0])
        snprintf(T.error, sizeof T.error, "%s",
                 T.completed ? "more than 1% of the cycles failed" : "no cycle completed");
    /* the first failure is kept as first_error; error is set only for an incomplete run */
    for (int f = 0; f < 2; f++) {
        printf(f ? ",\"error\":" : "\"first_error\":");
        if (!T.error[0] || (f && complete)) {
            printf("null");
            continue;
        }
        putchar('"');
        for (const char *s = T.error; *s; s++) {
            if (*s == '"' || *s == '\\')
                putchar('\\');
            if ((unsigned char)*s >= 0x20)
                putchar(*s);
        }
        putchar('"');
    }
    printf("}\n");
    return complete ? 0 : 1;
}
