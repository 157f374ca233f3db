/*
 * Test SMTP client (see smtpc.h): blocking socket, poll()-bounded reads,
 * one reply at a time, a transcript for failure messages.  Failures go
 * through harness_fail() at the caller's file and line.
 *
 * After STARTTLS the socket is non-blocking and owned by OpenSSL: sends and
 * reads go through SSL_write/SSL_read in poll() loops with the same
 * deadlines as the plain path, which is otherwise untouched.
 */
#include "harness.h"
#include "smtpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define SMTPC_MAX_LINE 65536

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        abort();
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *d = xrealloc(NULL, n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- transcript --------------------------------------------------------- */

static void log_raw(struct smtpc *c, const char *s, size_t n)
{
    if (c->loglen + n + 1 > c->logcap) {
        c->logcap = (c->loglen + n + 1) * 2;
        c->log = xrealloc(c->log, c->logcap);
    }
    memcpy(c->log + c->loglen, s, n);
    c->loglen += n;
    c->log[c->loglen] = 0;
}

/* Appends data escaped: printable ASCII as is, CR LF as \r\n + newline,
 * anything else as \xHH. */
static void log_escaped(struct smtpc *c, const char *data, size_t n)
{
    char tmp[8];
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)data[i];
        if (ch == '\n') {
            log_raw(c, "\\n\n", 3);
            if (i + 1 < n)
                log_raw(c, "   ", 3);
        } else if (ch == '\r') {
            log_raw(c, "\\r", 2);
        } else if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
            log_raw(c, (const char *)&data[i], 1);
        } else {
            snprintf(tmp, sizeof tmp, "\\x%02x", ch);
            log_raw(c, tmp, 4);
        }
    }
}

static void log_send(struct smtpc *c, const char *data, size_t n)
{
    log_raw(c, "C: ", 3);
    if (n > 600) {
        log_escaped(c, data, 200);
        char mid[64];
        snprintf(mid, sizeof mid, "[... %zu bytes ...]", n - 300);
        log_raw(c, mid, strlen(mid));
        log_escaped(c, data + n - 100, 100);
    } else {
        log_escaped(c, data, n);
    }
    if (!c->loglen || c->log[c->loglen - 1] != '\n')
        log_raw(c, "\n", 1);
}

static void log_recv_line(struct smtpc *c, const char *line, size_t n)
{
    log_raw(c, "S: ", 3);
    log_escaped(c, line, n > 2000 ? 2000 : n);
    if (n > 2000)
        log_raw(c, "[...]\n", 6);
}

char *smtpc_transcript(const struct smtpc *c, size_t max)
{
    if (!c || !c->log)
        return xstrndup("", 0);
    if (c->loglen <= max)
        return xstrndup(c->log, c->loglen);
    const char *start = c->log + c->loglen - max;
    const char *nl = memchr(start, '\n', max);
    if (nl)
        start = nl + 1;
    size_t n = (size_t)(c->log + c->loglen - start);
    char *s = xrealloc(NULL, n + 8);
    memcpy(s, "...\n", 4);
    memcpy(s + 4, start, n);
    s[n + 4] = 0;
    return s;
}

static void fail_with(const char *file, int line, struct smtpc *c, const char *what)
    __attribute__((noreturn));
static void fail_with(const char *file, int line, struct smtpc *c, const char *what)
{
    char *tr = smtpc_transcript(c, 2500);
    char *ctx = harness_context(c ? c->env : NULL);
    harness_fail(file, line, "%s\n--- SMTP transcript (local %s:%d) ---\n%s--- end ---\n%s",
                 what, c ? c->local_ip : "?", c ? c->local_port : 0, tr, ctx);
}

/* ---- connection --------------------------------------------------------- */

struct smtpc *smtpc_try_connect(const struct harness_env *env, int port, const char *src_ip)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    if (src_ip) {
        struct sockaddr_in src = { 0 };
        src.sin_family = AF_INET;
        if (inet_pton(AF_INET, src_ip, &src.sin_addr) != 1 ||
            bind(fd, (struct sockaddr *)&src, sizeof src) != 0) {
            int e = errno;
            close(fd);
            errno = e;
            return NULL;
        }
    }
    struct sockaddr_in sa = { 0 };
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)port);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    /* writes never block forever: a server that stops reading fails the test */
    struct timeval tv = { SMTPC_TIMEOUT_MS / 1000, 0 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    struct smtpc *c = xrealloc(NULL, sizeof *c);
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->env = env;
    struct sockaddr_in me;
    socklen_t sl = sizeof me;
    if (getsockname(fd, (struct sockaddr *)&me, &sl) == 0) {
        inet_ntop(AF_INET, &me.sin_addr, c->local_ip, sizeof c->local_ip);
        c->local_port = ntohs(me.sin_port);
    }
    return c;
}

struct smtpc *smtpc_connect_at(const char *file, int line, const struct harness_env *env,
                               int port, const char *src_ip)
{
    struct smtpc *c = smtpc_try_connect(env, port, src_ip);
    if (!c) {
        int e = errno;
        char *ctx = harness_context(env);
        harness_fail(file, line, "cannot connect to 127.0.0.1:%d%s%s: %s\n%s", port,
                     src_ip ? " from " : "", src_ip ? src_ip : "", strerror(e), ctx);
    }
    return c;
}

struct smtpc *smtpc_attach(const struct harness_env *env, int fd)
{
    struct timeval tv = { SMTPC_TIMEOUT_MS / 1000, 0 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct smtpc *c = xrealloc(NULL, sizeof *c);
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->env = env;
    snprintf(c->local_ip, sizeof c->local_ip, "fd %d", fd);
    return c;
}

static void tls_drop(struct smtpc *c)
{
    SSL_free(c->ssl);
    SSL_CTX_free(c->ssl_ctx);
    c->ssl = NULL;
    c->ssl_ctx = NULL;
}

void smtpc_close(struct smtpc *c)
{
    if (!c)
        return;
    if (c->ssl && !c->eof)
        SSL_shutdown(c->ssl); /* one try at a close_notify; the socket is non-blocking */
    tls_drop(c);
    if (c->fd >= 0)
        close(c->fd);
    free(c->rbuf);
    free(c->log);
    free(c);
}

/* ---- sending ------------------------------------------------------------ */

/* OpenSSL's queued errors as one line ("" if none); clears the queue. */
static void ssl_errors(char *buf, size_t len)
{
    size_t used = 0;
    unsigned long e;
    buf[0] = 0;
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        ERR_error_string_n(e, one, sizeof one);
        int n = snprintf(buf + used, len - used, "%s%s", used ? "; " : "", one);
        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
    ERR_clear_error();
}

static void log_tls_error(struct smtpc *c, const char *what, int ssl_err)
{
    char errs[600], line[800];
    ssl_errors(errs, sizeof errs);
    int n = snprintf(line, sizeof line, "-- TLS %s failed (SSL_get_error %d, errno %d%s%s) --\n",
                     what, ssl_err, errno, errs[0] ? ": " : "", errs);
    if (n > 0)
        log_raw(c, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* Waits for the socket as OpenSSL asked (SSL_ERROR_WANT_READ/WRITE).
 * 1 = ready, SMTPC_TIMEOUT, SMTPC_ERR. */
static int tls_wait(struct smtpc *c, int ssl_err, long deadline)
{
    for (;;) {
        long left = deadline - now_ms();
        if (left < 0)
            left = 0;
        struct pollfd pfd = { c->fd, ssl_err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, 0 };
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return SMTPC_TIMEOUT;
        return r < 0 ? SMTPC_ERR : 1;
    }
}

static int tls_send(struct smtpc *c, const char *p, size_t len)
{
    long deadline = now_ms() + SMTPC_TIMEOUT_MS;
    size_t off = 0;
    while (off < len) {
        size_t chunk = len - off > 1 << 30 ? 1 << 30 : len - off;
        ERR_clear_error();
        errno = 0;
        int n = SSL_write(c->ssl, p + off, (int)chunk);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            int w = tls_wait(c, e, deadline);
            if (w == SMTPC_TIMEOUT)
                errno = EAGAIN;
            if (w != 1)
                return -1;
            continue;
        }
        int saved = errno;
        log_tls_error(c, "write", e);
        errno = e == SSL_ERROR_SYSCALL && saved ? saved : EPROTO;
        return -1;
    }
    return 0;
}

int smtpc_try_send(struct smtpc *c, const void *data, size_t len)
{
    log_send(c, data, len);
    if (c->ssl)
        return tls_send(c, data, len);
    const char *p = data;
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, p + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        off += (size_t)n;
    }
    return 0;
}

void smtpc_send_at(const char *file, int line, struct smtpc *c, const void *data, size_t len)
{
    if (smtpc_try_send(c, data, len) != 0) {
        char what[200];
        snprintf(what, sizeof what, "sending %zu bytes failed: %s%s", len, strerror(errno),
                 errno == EAGAIN ? " (the server stopped reading for 20 s)" : "");
        fail_with(file, line, c, what);
    }
}

void smtpc_sendf_at(const char *file, int line, struct smtpc *c, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    smtpc_send_at(file, line, c, s, (size_t)n);
    free(s);
}

void smtpc_cmd_at(const char *file, int line, struct smtpc *c, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    s = xrealloc(s, (size_t)n + 3);
    memcpy(s + n, "\r\n", 3);
    smtpc_send_at(file, line, c, s, (size_t)n + 2);
    free(s);
}

/* ---- receiving ---------------------------------------------------------- */

static void grow_rbuf(struct smtpc *c)
{
    if (c->rlen + 4096 > c->rcap) {
        c->rcap = (c->rlen + 4096) * 2;
        c->rbuf = xrealloc(c->rbuf, c->rcap);
    }
}

/* fill() over TLS.  Records that carry no data (TLS 1.3 session tickets)
 * just mean waiting on. */
static int tls_fill(struct smtpc *c, long deadline)
{
    for (;;) {
        grow_rbuf(c);
        size_t room = c->rcap - c->rlen - 1;
        ERR_clear_error();
        errno = 0;
        int n = SSL_read(c->ssl, c->rbuf + c->rlen, room > 1 << 30 ? 1 << 30 : (int)room);
        if (n > 0) {
            c->rlen += (size_t)n;
            c->rbuf[c->rlen] = 0;
            return 1;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            int w = tls_wait(c, e, deadline);
            if (w != 1)
                return w;
            continue;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            /* close_notify, or (SSL_OP_IGNORE_UNEXPECTED_EOF) a bare TCP close */
            c->eof = 1;
            log_raw(c, "S: <EOF>\n", 9);
            return 0;
        }
        if (e == SSL_ERROR_SYSCALL && (errno == ECONNRESET || errno == EPIPE || errno == 0)) {
            c->eof = 1;
            log_raw(c, "S: <connection reset>\n", 22);
            ERR_clear_error();
            return 0;
        }
        log_tls_error(c, "read", e);
        errno = EPROTO;
        return SMTPC_ERR;
    }
}

/* Reads more bytes into rbuf, waiting up to deadline.  1 = got some, 0 = EOF,
 * SMTPC_TIMEOUT, SMTPC_ERR. */
static int fill(struct smtpc *c, long deadline)
{
    if (c->eof)
        return 0;
    if (c->ssl)
        return tls_fill(c, deadline);
    for (;;) {
        long left = deadline - now_ms();
        if (left < 0)
            left = 0;
        struct pollfd pfd = { c->fd, POLLIN, 0 };
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return SMTPC_TIMEOUT;
        if (r < 0)
            return SMTPC_ERR;
        if (c->rlen + 4096 > c->rcap) {
            c->rcap = (c->rlen + 4096) * 2;
            c->rbuf = xrealloc(c->rbuf, c->rcap);
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen - 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == ECONNRESET) {
            c->eof = 1;
            log_raw(c, "S: <connection reset>\n", 22);
            return 0;
        }
        if (n < 0)
            return SMTPC_ERR;
        if (n == 0) {
            c->eof = 1;
            log_raw(c, "S: <EOF>\n", 9);
            return 0;
        }
        c->rlen += (size_t)n;
        c->rbuf[c->rlen] = 0;
        return 1;
    }
}

static void consume(struct smtpc *c, size_t n)
{
    memmove(c->rbuf, c->rbuf + n, c->rlen - n);
    c->rlen -= n;
}

int smtpc_read_reply(struct smtpc *c, char **text, int timeout_ms)
{
    long deadline = now_ms() + timeout_ms;
    char *acc = NULL;
    size_t acclen = 0;
    int code = -1, status = 0;
    if (text)
        *text = NULL;
    for (;;) {
        char *nl = c->rlen ? memchr(c->rbuf, '\n', c->rlen) : NULL;
        if (!nl) {
            if (c->rlen > SMTPC_MAX_LINE) {
                status = SMTPC_BAD;
                break;
            }
            int r = fill(c, deadline);
            if (r == 1)
                continue;
            status = r == 0 ? SMTPC_EOF : r;
            if (c->rlen) { /* a partial line, shown as is */
                acc = xrealloc(acc, acclen + c->rlen + 2);
                if (acclen)
                    acc[acclen++] = '\n';
                memcpy(acc + acclen, c->rbuf, c->rlen);
                acclen += c->rlen;
                acc[acclen] = 0;
                log_recv_line(c, c->rbuf, c->rlen);
                log_raw(c, "  <incomplete line>\n", 20);
                consume(c, c->rlen);
            }
            break;
        }
        size_t linelen = (size_t)(nl - c->rbuf) + 1;
        log_recv_line(c, c->rbuf, linelen);
        size_t l = linelen - 1;
        int crlf = l > 0 && c->rbuf[l - 1] == '\r';
        if (crlf)
            l--;
        acc = xrealloc(acc, acclen + l + 2);
        if (acclen)
            acc[acclen++] = '\n';
        memcpy(acc + acclen, c->rbuf, l);
        acclen += l;
        acc[acclen] = 0;
        const char *ln = c->rbuf;
        int ok = crlf && l >= 3 && ln[0] >= '2' && ln[0] <= '5' && ln[1] >= '0' &&
                 ln[1] <= '9' && ln[2] >= '0' && ln[2] <= '9' &&
                 (l == 3 || ln[3] == ' ' || ln[3] == '-');
        int this_code = ok ? (ln[0] - '0') * 100 + (ln[1] - '0') * 10 + (ln[2] - '0') : -1;
        int more = ok && l > 3 && ln[3] == '-';
        consume(c, linelen);
        if (!ok || (code >= 0 && this_code != code)) {
            status = SMTPC_BAD;
            break;
        }
        code = this_code;
        if (!more) {
            status = code;
            break;
        }
    }
    if (text)
        *text = acc ? acc : xstrndup("", 0);
    else
        free(acc);
    return status;
}

static char *describe_got(int code, const char *text, int timeout_ms)
{
    char *s = NULL;
    int n;
    switch (code) {
    case SMTPC_EOF:
        n = asprintf(&s, "<connection closed by server>%s%s", text && *text ? " after: " : "",
                     text ? text : "");
        break;
    case SMTPC_TIMEOUT:
        n = asprintf(&s, "<no complete reply within %d ms>%s%s", timeout_ms,
                     text && *text ? " partial: " : "", text ? text : "");
        break;
    case SMTPC_BAD:
        n = asprintf(&s, "<malformed reply (not \"ddd-...\"/\"ddd ...\" CRLF lines, or mixed"
                     " codes)>: %s", text ? text : "");
        break;
    case SMTPC_ERR:
        n = asprintf(&s, "<socket error: %s>", strerror(errno));
        break;
    default:
        n = asprintf(&s, "%s", text ? text : "");
    }
    if (n < 0)
        abort();
    return s;
}

void smtpc_expect_at(const char *file, int line, struct smtpc *c, const char *want, int prefix)
{
    char *got = NULL;
    int code = smtpc_read_reply(c, &got, SMTPC_TIMEOUT_MS);
    int ok = code > 0 && (prefix ? strncmp(got, want, strlen(want)) == 0 : strcmp(got, want) == 0);
    if (!ok) {
        char *g = describe_got(code, got, SMTPC_TIMEOUT_MS);
        char *what = NULL;
        if (asprintf(&what, "expected reply %s:\n    %s\ngot:\n    %s",
                     prefix ? "starting with" : "exactly", want, g) < 0)
            abort();
        fail_with(file, line, c, what);
    }
    free(got);
}

char *smtpc_expect_code_at(const char *file, int line, struct smtpc *c, int want)
{
    char *got = NULL;
    int code = smtpc_read_reply(c, &got, SMTPC_TIMEOUT_MS);
    if (code != want) {
        char *g = describe_got(code, got, SMTPC_TIMEOUT_MS);
        char *what = NULL;
        if (asprintf(&what, "expected a %d reply, got:\n    %s", want, g) < 0)
            abort();
        fail_with(file, line, c, what);
    }
    return got;
}

void smtpc_chat_at(const char *file, int line, struct smtpc *c, const char *cmd,
                   const char *reply)
{
    smtpc_cmd_at(file, line, c, "%s", cmd);
    smtpc_expect_at(file, line, c, reply, 0);
}

void smtpc_expect_eof_at(const char *file, int line, struct smtpc *c, int timeout_ms)
{
    long deadline = now_ms() + timeout_ms;
    for (;;) {
        if (c->rlen) {
            char *what = NULL;
            if (asprintf(&what, "expected the server to close the connection, but it sent"
                         " %zu more byte(s): %.*s", c->rlen, (int)(c->rlen > 300 ? 300 : c->rlen),
                         c->rbuf) < 0)
                abort();
            fail_with(file, line, c, what);
        }
        int r = fill(c, deadline);
        if (r == 0)
            return;
        if (r == 1)
            continue;
        char what[160];
        snprintf(what, sizeof what, "expected the server to close the connection within %d ms;"
                 " %s", timeout_ms, r == SMTPC_TIMEOUT ? "it stayed open" : strerror(errno));
        fail_with(file, line, c, what);
    }
}

char *smtpc_read_until_eof_at(const char *file, int line, struct smtpc *c, int timeout_ms,
                              size_t *len)
{
    long deadline = now_ms() + timeout_ms;
    for (;;) {
        int r = fill(c, deadline);
        if (r == 0)
            break;
        if (r == 1)
            continue;
        char what[160];
        snprintf(what, sizeof what, "expected EOF within %d ms: %s", timeout_ms,
                 r == SMTPC_TIMEOUT ? "the connection stayed open" : strerror(errno));
        fail_with(file, line, c, what);
    }
    char *s = xstrndup(c->rbuf ? c->rbuf : "", c->rlen);
    if (len)
        *len = c->rlen;
    if (c->rlen)
        log_recv_line(c, c->rbuf, c->rlen);
    consume(c, c->rlen);
    return s;
}

int smtpc_is_spool_id(const char *s)
{
    for (int i = 0; i < 32; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return s[32] == 0;
}

void smtpc_expect_ids_at(const char *file, int line, struct smtpc *c, int n, char ids[][33])
{
    char *got = NULL;
    int code = smtpc_read_reply(c, &got, SMTPC_TIMEOUT_MS);
    const char *pre = "250 OK ids=";
    char *why = NULL;
    if (code != 250 || strncmp(got, pre, strlen(pre))) {
        why = "not a \"250 OK ids=...\" reply";
    } else {
        const char *p = got + strlen(pre);
        int k = 0;
        while (*p && !why) {
            const char *sp = strchr(p, ' ');
            size_t l = sp ? (size_t)(sp - p) : strlen(p);
            char tok[64];
            if (l == 0 || l >= sizeof tok) {
                why = "an id is not 32 lowercase hex digits";
                break;
            }
            memcpy(tok, p, l);
            tok[l] = 0;
            if (!smtpc_is_spool_id(tok)) {
                why = "an id is not 32 lowercase hex digits";
                break;
            }
            if (k < n) {
                for (int j = 0; j < k; j++)
                    if (!strcmp(ids[j], tok))
                        why = "the ids are not distinct";
                memcpy(ids[k], tok, 33);
            }
            k++;
            p += l;
            if (*p == ' ')
                p++;
        }
        if (!why && k != n)
            why = "wrong number of ids";
    }
    if (why) {
        char *g = describe_got(code, got, SMTPC_TIMEOUT_MS);
        char *what = NULL;
        if (asprintf(&what, "expected \"250 OK ids=\" with %d distinct 32-hex id%s (%s);"
                     " got:\n    %s", n, n == 1 ? "" : "s", why, g) < 0)
            abort();
        fail_with(file, line, c, what);
    }
    free(got);
}

void smtpc_transaction_at(const char *file, int line, struct smtpc *c, const char *from,
                          const char *const rcpts[], const char *body, char ids[][33])
{
    char want[600];
    smtpc_cmd_at(file, line, c, "MAIL FROM:<%s>", from);
    snprintf(want, sizeof want, "250 OK <%s>", from);
    smtpc_expect_at(file, line, c, want, 0);
    int n = 0;
    for (; rcpts[n]; n++) {
        smtpc_cmd_at(file, line, c, "RCPT TO:<%s>", rcpts[n]);
        snprintf(want, sizeof want, "250 OK <%s>", rcpts[n]);
        smtpc_expect_at(file, line, c, want, 0);
    }
    smtpc_chat_at(file, line, c, "DATA", "354 Send body; end with CRLF.CRLF");
    smtpc_send_at(file, line, c, body, strlen(body));
    smtpc_send_at(file, line, c, ".\r\n", 3);
    smtpc_expect_ids_at(file, line, c, n, ids);
}

/* ---- STARTTLS ----------------------------------------------------------- */

int smtpc_tls_handshake(struct smtpc *c, const struct smtpc_tls_opts *opts, int timeout_ms,
                        char *err, size_t errlen, int *lib_refused)
{
    if (lib_refused)
        *lib_refused = 0;
    if (c->ssl) {
        snprintf(err, errlen, "TLS is already active on this connection");
        return -1;
    }
    /* OpenSSL writes with write(): a server that has closed must give the
     * test an error, not a SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        char errs[400];
        ssl_errors(errs, sizeof errs);
        snprintf(err, errlen, "SSL_CTX_new: %s", errs);
        return -1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    const char *bad = NULL;
    if (opts && opts->security_level_0)
        SSL_CTX_set_security_level(ctx, 0);
    if (opts && opts->min_version && SSL_CTX_set_min_proto_version(ctx, opts->min_version) != 1)
        bad = "SSL_CTX_set_min_proto_version";
    if (opts && opts->max_version && SSL_CTX_set_max_proto_version(ctx, opts->max_version) != 1)
        bad = "SSL_CTX_set_max_proto_version";
    if (opts && opts->cipher_list && SSL_CTX_set_cipher_list(ctx, opts->cipher_list) != 1)
        bad = "SSL_CTX_set_cipher_list";
    if (opts && opts->cert_file &&
        (SSL_CTX_use_certificate_chain_file(ctx, opts->cert_file) != 1 ||
         SSL_CTX_use_PrivateKey_file(ctx, opts->key_file ? opts->key_file : opts->cert_file,
                                     SSL_FILETYPE_PEM) != 1))
        bad = "client certificate";
    SSL *ssl = bad ? NULL : SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, c->fd) != 1) {
        char errs[400];
        ssl_errors(errs, sizeof errs);
        snprintf(err, errlen, "%s: %s", bad ? bad : "SSL_new/SSL_set_fd", errs);
        if (lib_refused)
            *lib_refused = 1;
        SSL_free(ssl);
        SSL_CTX_free(ctx);
        return -1;
    }
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    c->ssl = ssl;
    c->ssl_ctx = ctx;
    int fl = fcntl(c->fd, F_GETFL);
    fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
    log_raw(c, "-- TLS handshake --\n", 20);

    long deadline = now_ms() + timeout_ms;
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_connect(ssl);
        if (r == 1)
            break;
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            int w = tls_wait(c, e, deadline);
            if (w == 1)
                continue;
            snprintf(err, errlen, "%s", w == SMTPC_TIMEOUT ? "no handshake within the timeout"
                     : strerror(errno));
        } else {
            int saved = errno;
            char errs[600];
            ssl_errors(errs, sizeof errs);
            if (errs[0])
                snprintf(err, errlen, "%s", errs);
            else if (e == SSL_ERROR_SYSCALL)
                snprintf(err, errlen, "connection closed or reset during the handshake%s%s",
                         saved ? ": " : "", saved ? strerror(saved) : "");
            else
                snprintf(err, errlen, "SSL_connect: SSL_get_error %d", e);
        }
        /* nothing written: OpenSSL refused before sending a ClientHello */
        if (lib_refused)
            *lib_refused = BIO_number_written(SSL_get_wbio(ssl)) == 0;
        char line[800];
        int n = snprintf(line, sizeof line, "-- TLS handshake failed: %s --\n", err);
        if (n > 0)
            log_raw(c, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
        /* back to the bare socket: the caller can see whether the server
         * closes it */
        tls_drop(c);
        fcntl(c->fd, F_SETFL, fl);
        return -1;
    }

    snprintf(c->tls_version, sizeof c->tls_version, "%s", SSL_get_version(ssl));
    const char *cipher = SSL_get_cipher_name(ssl);
    snprintf(c->tls_cipher, sizeof c->tls_cipher, "%s", cipher ? cipher : "");
    c->tls_peer_cn[0] = 0;
    X509 *x = SSL_get1_peer_certificate(ssl);
    if (x) {
        if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName,
                                      c->tls_peer_cn, (int)sizeof c->tls_peer_cn) < 0)
            c->tls_peer_cn[0] = 0;
        X509_free(x);
    }
    char line[500];
    int n = snprintf(line, sizeof line, "-- TLS up: %s %s, server certificate CN \"%s\" --\n",
                     c->tls_version, c->tls_cipher, c->tls_peer_cn);
    if (n > 0)
        log_raw(c, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    return 0;
}

void smtpc_starttls_at(const char *file, int line, struct smtpc *c,
                       const struct smtpc_tls_opts *opts)
{
    smtpc_cmd_at(file, line, c, "STARTTLS");
    char *got = NULL;
    int code = smtpc_read_reply(c, &got, SMTPC_TIMEOUT_MS);
    if (code != 220) {
        char *g = describe_got(code, got, SMTPC_TIMEOUT_MS);
        char *what = NULL;
        if (asprintf(&what, "STARTTLS: expected a 220 reply, got:\n    %s", g) < 0)
            abort();
        fail_with(file, line, c, what);
    }
    free(got);
    if (c->rlen) {
        char *what = NULL;
        if (asprintf(&what, "STARTTLS: the server sent %zu plaintext byte(s) after its 220: %.*s",
                     c->rlen, (int)(c->rlen > 300 ? 300 : c->rlen), c->rbuf) < 0)
            abort();
        fail_with(file, line, c, what);
    }
    char err[700];
    if (smtpc_tls_handshake(c, opts, SMTPC_TIMEOUT_MS, err, sizeof err, NULL) != 0) {
        char what[800];
        snprintf(what, sizeof what, "STARTTLS: TLS handshake failed: %s", err);
        fail_with(file, line, c, what);
    }
}
