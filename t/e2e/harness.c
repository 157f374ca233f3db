/*
 * End-to-end harness: temp dirs, free ports, policy files, starting and
 * stopping kumod in its own process group, reading its output, spool files
 * and JSON logs.  Entry points are in harness.h.  Every failure fails the
 * current Check test (harness_fail) with the caller's file and line; nothing
 * here returns an error the test would have to check.
 */
#include "harness.h"
#include "spool/spool.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- small utilities ---------------------------------------------------- */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort();
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        abort();
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = xmalloc(n);
    memcpy(d, s, n);
    return d;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

void harness_pause_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

double harness_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void kill_all_at_exit(void);

void harness_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    /* Check refuses a failure message that packs to more than half of its
     * CK_MAX_MSG_SIZE (8192): it prints "Message string too long" and the
     * test ends with an exit status, its message lost.  Keep the start and
     * the end of a long message (the tail of a transcript or of kumod's
     * output is what matters), 3,500 bytes in all. */
    const char *m = msg ? msg : "(out of memory formatting the failure)";
    size_t len = strlen(m);
    if (len > 3500) {
        size_t head = 1000, tail = 2400;
        char *cut = xasprintf("%.*s\n[... %zu bytes cut ...]\n%s", (int)head, m,
                              len - head - tail, m + len - tail);
        free(msg);
        msg = cut;
        m = msg;
    }
    /* In fork mode Check ends a failed test with _exit(): no atexit, so
     * kill this test's kumods now rather than at the end of the tcase. */
    const char *fork_mode = getenv("CK_FORK");
    if (!(fork_mode && !strcmp(fork_mode, "no")))
        kill_all_at_exit();
    _ck_assert_failed(file, line, "Failed", "%s", m);
}

int harness_contains(const char *hay, size_t len, const char *needle)
{
    return memmem(hay, len, needle, strlen(needle)) != NULL;
}

/* ---- registry of running kumods ----------------------------------------- */

/* Envs alive in this process, so an exiting (failed) test kills its kumods. */
#define MAX_ENVS 64
static struct harness_env *envs[MAX_ENVS];
static int atexit_done;

/* Set in the runner process by the tcase fixture, inherited by each forked
 * test: one file per running kumod pgid, holding the leader's start time. */
static char reg_dir[256];
static pid_t reg_owner; /* the runner: it cleans up its own kumods itself */

static unsigned long long proc_starttime(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    /* fields after comm: state(3) ... starttime(22) */
    int field = 2;
    unsigned long long st = 0;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
        field++;
        if (field == 22) {
            st = strtoull(tok, NULL, 10);
            break;
        }
    }
    return st;
}

static void reg_add(pid_t pgid)
{
    if (!reg_dir[0] || getpid() == reg_owner)
        return;
    char path[400];
    snprintf(path, sizeof path, "%s/%d", reg_dir, (int)pgid);
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    fprintf(f, "%llu\n", proc_starttime(pgid));
    fclose(f);
}

static void reg_del(pid_t pgid)
{
    if (!reg_dir[0])
        return;
    char path[400];
    snprintf(path, sizeof path, "%s/%d", reg_dir, (int)pgid);
    unlink(path);
}

static void reg_setup(void)
{
    char tmpl[] = "/tmp/kumo-e2e-reg.XXXXXX";
    if (mkdtemp(tmpl)) {
        snprintf(reg_dir, sizeof reg_dir, "%s", tmpl);
        reg_owner = getpid();
    }
}

/* Runs in the runner after the tcase: kills what timed-out tests left. */
static void reg_teardown(void)
{
    if (!reg_dir[0])
        return;
    DIR *d = opendir(reg_dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            pid_t pgid = (pid_t)atoi(de->d_name);
            char path[600];
            snprintf(path, sizeof path, "%s/%s", reg_dir, de->d_name);
            char *st = harness_slurp(path, NULL);
            unsigned long long want = st ? strtoull(st, NULL, 10) : 0;
            free(st);
            unsigned long long have = proc_starttime(pgid);
            /* The leader still being the same process, or its group still
             * having members (a pgid is not reused while it has any), means
             * the group is ours. */
            if (pgid > 1 && ((have && have == want) ||
                             (!have && harness_pgrp_live(pgid, NULL, 0) > 0))) {
                fprintf(stderr, "e2e harness: killing kumod process group %d left by a"
                        " failed or timed-out test\n", (int)pgid);
                kill(-pgid, SIGKILL);
                if (have)
                    waitpid(pgid, NULL, WNOHANG);
            }
            unlink(path);
        }
        closedir(d);
    }
    rmdir(reg_dir);
    reg_dir[0] = 0;
}

static void kill_all_at_exit(void)
{
    for (int i = 0; i < MAX_ENVS; i++) {
        struct harness_env *env = envs[i];
        if (!env || env->owner != getpid())
            continue;
        if (env->pgid > 0) {
            kill(-env->pgid, SIGKILL);
            if (env->pid > 0)
                waitpid(env->pid, NULL, 0);
            reg_del(env->pgid);
            fprintf(stderr, "e2e harness: killed kumod group %d; test dir kept: %s\n",
                    (int)env->pgid, env->dir);
            env->pid = env->pgid = 0;
        }
    }
}

static void env_track(struct harness_env *env)
{
    if (!atexit_done) {
        atexit(kill_all_at_exit);
        atexit_done = 1;
    }
    for (int i = 0; i < MAX_ENVS; i++)
        if (!envs[i]) {
            envs[i] = env;
            return;
        }
}

static void env_untrack(struct harness_env *env)
{
    for (int i = 0; i < MAX_ENVS; i++)
        if (envs[i] == env)
            envs[i] = NULL;
}

TCase *harness_tcase(const char *name)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, HARNESS_TCASE_TIMEOUT);
    tcase_add_unchecked_fixture(tc, reg_setup, reg_teardown);
    return tc;
}

int harness_run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- env, files, ports -------------------------------------------------- */

/* A port below the kernel's ephemeral range (32768 and up by default), so
 * that a program the test starts on port 0 (a sink) can never be handed
 * the port chosen here for kumod between the choice and kumod's bind. */
int harness_free_port(void)
{
    static unsigned seed;
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    for (int tries = 0; tries < 500; tries++) {
        int port = 20000 + (int)(rand_r(&seed) % 12000);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        struct sockaddr_in sa = { 0 };
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa.sin_port = htons((uint16_t)port);
        int ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        close(fd);
        if (ok && !harness_port_open(port))
            return port;
    }
    return -1;
}

int harness_port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in sa = { 0 };
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)port);
    int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    struct sockaddr_in me;
    socklen_t sl = sizeof me;
    /* a TCP self-connect (source port == port) is not a listener */
    if (ok && getsockname(fd, (struct sockaddr *)&me, &sl) == 0 && me.sin_port == sa.sin_port)
        ok = 0;
    close(fd);
    return ok;
}

struct harness_env *harness_env_new_at(const char *file, int line)
{
    struct harness_env *env = xmalloc(sizeof *env);
    memset(env, 0, sizeof *env);
    char tmpl[] = "/tmp/kumo-e2e.XXXXXX";
    if (!mkdtemp(tmpl))
        harness_fail(file, line, "mkdtemp: %s", strerror(errno));
    snprintf(env->dir, sizeof env->dir, "%s", tmpl);
    /* as root, kumod drops to --user, which must reach the spool below */
    if (geteuid() == 0)
        chmod(env->dir, 0755);
    snprintf(env->policy, sizeof env->policy, "%s/policy.lua", env->dir);
    env->port = harness_free_port();
    if (env->port <= 0)
        harness_fail(file, line, "cannot find a free loopback port: %s", strerror(errno));
    env_track(env);
    return env;
}

static int rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d))) {
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                    continue;
                char *sub = xasprintf("%s/%s", path, de->d_name);
                rm_rf(sub);
                free(sub);
            }
            closedir(d);
        }
        return rmdir(path);
    }
    return unlink(path);
}

void harness_env_free(struct harness_env *env)
{
    if (!env)
        return;
    harness_stop(env, NULL);
    const char *keep = getenv("KUMO_E2E_KEEP");
    if (!(keep && *keep && strcmp(keep, "0")))
        rm_rf(env->dir);
    env_untrack(env);
    free(env);
}

char *harness_path(const struct harness_env *env, const char *rel)
{
    return xasprintf("%s/%s", env->dir, rel);
}

char *harness_subst(const struct harness_env *env, const char *tmpl, const char *extra)
{
    char port[16];
    snprintf(port, sizeof port, "%d", env->port);
    size_t cap = strlen(tmpl) + 1, len = 0;
    char *out = xmalloc(cap);
    for (const char *p = tmpl; *p;) {
        const char *rep = NULL;
        size_t skip = 0;
        if (!strncmp(p, "@DIR@", 5))
            rep = env->dir, skip = 5;
        else if (!strncmp(p, "@PORT@", 6))
            rep = port, skip = 6;
        else if (!strncmp(p, "@EXTRA@", 7))
            rep = extra ? extra : "", skip = 7;
        size_t add = rep ? strlen(rep) : 1;
        if (len + add + 1 > cap) {
            cap = (len + add + 1) * 2;
            out = xrealloc(out, cap);
        }
        if (rep) {
            memcpy(out + len, rep, add);
            p += skip;
        } else {
            out[len] = *p++;
        }
        len += add;
    }
    out[len] = 0;
    return out;
}

void harness_write_file_at(const char *file, int line, const struct harness_env *env,
                           const char *rel, const char *data, size_t len)
{
    char *path = harness_path(env, rel);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        harness_fail(file, line, "cannot create %s: %s", path, strerror(errno));
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            harness_fail(file, line, "write %s: %s", path, strerror(errno));
        off += (size_t)n;
    }
    close(fd);
    free(path);
}

void harness_write_policy_at(const char *file, int line, struct harness_env *env,
                             const char *tmpl, const char *extra)
{
    char *text = harness_subst(env, tmpl, extra);
    harness_write_file_at(file, line, env, "policy.lua", text, strlen(text));
    free(text);
}

char *harness_slurp(const char *path, size_t *lenp)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            free(buf);
            close(fd);
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = 0;
    if (lenp)
        *lenp = len;
    return buf;
}

/* ---- kumod lifecycle ---------------------------------------------------- */

char *harness_bin_path(const char *prog)
{
    const char *bin = getenv("KUMO_BIN");
    if (bin && *bin)
        return xasprintf("%s/%s", bin, prog);
    const char *src = getenv("KUMO_SRC");
    if (src && *src)
        return xasprintf("%s/bin/%s", src, prog);
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd))
        snprintf(cwd, sizeof cwd, ".");
    return xasprintf("%s/bin/%s", cwd, prog);
}

static char *kumod_path(void)
{
    return harness_bin_path("kumod");
}

const char *harness_status_str(int status)
{
    static char buf[64];
    if (status == -1)
        snprintf(buf, sizeof buf, "not running");
    else if (WIFEXITED(status))
        snprintf(buf, sizeof buf, "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, sizeof buf, "killed by signal %d (%s)%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(buf, sizeof buf, "wait status 0x%x", status);
    return buf;
}

pid_t harness_spawn_at(const char *file, int line, struct harness_env *env,
                       const char *const argv[])
{
    if (env->pid)
        harness_fail(file, line, "harness: kumod already running (pid %d)", (int)env->pid);
    char *bin = kumod_path();
    if (access(bin, X_OK) != 0)
        harness_fail(file, line, "cannot execute %s: %s (set KUMO_BIN to the directory"
                     " holding kumod)", bin, strerror(errno));
    size_t argc = 0;
    int has_policy = 0, has_user = 0, validate = 0;
    while (argv[argc]) {
        has_policy |= !strcmp(argv[argc], "--policy");
        has_user |= !strcmp(argv[argc], "--user");
        validate |= !strcmp(argv[argc], "--validate");
        argc++;
    }
    char **av = xmalloc((argc + 4) * sizeof *av);
    av[0] = bin;
    size_t k = 1;
    for (size_t i = 1; i < argc; i++)
        av[k++] = (char *)argv[i];
    /* kumod refuses to run as root without --user (its workers never run
     * as root); give it one, as an administrator would. */
    if (geteuid() == 0 && has_policy && !has_user && !validate) {
        const char *user = getenv("KUMO_E2E_USER");
        av[k++] = "--user";
        av[k++] = (char *)(user && *user ? user : "nobody");
    }
    av[k] = NULL;

    env->instance++;
    snprintf(env->out, sizeof env->out, "%s/kumod.%d.out", env->dir, env->instance);
    int out = open(env->out, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (out < 0)
        harness_fail(file, line, "cannot create %s: %s", env->out, strerror(errno));
    env->leftover[0] = 0;

    pid_t pid = fork();
    if (pid < 0)
        harness_fail(file, line, "fork: %s", strerror(errno));
    if (pid == 0) {
        setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int sigs[] = { SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGALRM, SIGUSR1, SIGUSR2 };
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
            signal(sigs[i], SIG_DFL);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0)
            dup2(nul, 0);
        dup2(out, 1);
        dup2(out, 2);
        long maxfd = sysconf(_SC_OPEN_MAX);
        if (maxfd < 0 || maxfd > 65536)
            maxfd = 65536;
        for (int fd = 3; fd < maxfd; fd++)
            close(fd);
        if (chdir(env->dir) != 0)
            _exit(126);
        execv(bin, av);
        dprintf(2, "e2e harness: exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also in the child: whichever runs first */
    close(out);
    env->pid = pid;
    env->pgid = pid;
    env->owner = getpid();
    reg_add(pid);
    free(av);
    free(bin);
    return pid;
}

int harness_wait_exit(struct harness_env *env, int timeout_s, int *status)
{
    if (!env->pid)
        return 1;
    double end = harness_now_s() + timeout_s;
    for (;;) {
        int st;
        pid_t r = waitpid(env->pid, &st, WNOHANG);
        if (r == env->pid || (r < 0 && errno == ECHILD)) {
            if (r < 0)
                st = -1;
            env->last_status = st;
            env->pid = 0;
            if (status)
                *status = st;
            return 1;
        }
        if (harness_now_s() >= end)
            return 0;
        harness_pause_ms(20);
    }
}

/* After the leader exited: give the group 2 s to empty, note and kill what
 * is left, forget the group. */
static void reap_group(struct harness_env *env)
{
    if (!env->pgid)
        return;
    double end = harness_now_s() + 2.0;
    char desc[sizeof env->leftover];
    desc[0] = 0;
    while (harness_pgrp_live(env->pgid, desc, sizeof desc) > 0 && harness_now_s() < end)
        harness_pause_ms(50);
    if (harness_pgrp_live(env->pgid, desc, sizeof desc) > 0)
        snprintf(env->leftover, sizeof env->leftover, "%s", desc);
    kill(-env->pgid, SIGKILL);
    reg_del(env->pgid);
    env->pgid = 0;
}

char *harness_context(const struct harness_env *env)
{
    if (!env)
        return xstrdup("");
    size_t len = 0;
    char *out = harness_output(env);
    len = strlen(out);
    const char *tail = out;
    if (len > 1500)
        tail = out + len - 1500;
    char *s = xasprintf("test dir: %s\nkumod %s; its output%s (%s):\n%s%s",
                        env->dir,
                        env->pid ? "running" : harness_status_str(env->last_status),
                        tail != out ? " (tail)" : "", env->out[0] ? env->out : "none",
                        tail, (len && tail[strlen(tail) - 1] != '\n') ? "\n" : "");
    free(out);
    return s;
}

void harness_start_at(const char *file, int line, struct harness_env *env)
{
    const char *argv[] = { "kumod", "--policy", env->policy, "--workers", "2", NULL };
    if (harness_port_open(env->port))
        harness_fail(file, line, "port %d is already accepting connections before kumod"
                     " started", env->port);
    harness_spawn_at(file, line, env, argv);
    double end = harness_now_s() + HARNESS_START_TIMEOUT;
    for (;;) {
        int st;
        if (harness_wait_exit(env, 0, &st)) {
            reap_group(env);
            char *ctx = harness_context(env);
            harness_fail(file, line, "kumod exited (%s) before its port %d accepted"
                         " connections\n%s", harness_status_str(st), env->port, ctx);
        }
        if (harness_port_open(env->port))
            return;
        if (harness_now_s() >= end) {
            harness_kill9(env);
            char *ctx = harness_context(env);
            harness_fail(file, line, "kumod did not open port %d within %d s\n%s",
                         env->port, HARNESS_START_TIMEOUT, ctx);
        }
        harness_pause_ms(50);
    }
}

void harness_start_default_at(const char *file, int line, struct harness_env *env,
                              const char *extra)
{
    harness_write_policy_at(file, line, env, HARNESS_POLICY_TEMPLATE, extra);
    harness_start_at(file, line, env);
}

int harness_run_at(const char *file, int line, struct harness_env *env,
                   const char *const argv[], int timeout_s, char **output)
{
    harness_spawn_at(file, line, env, argv);
    int st;
    if (!harness_wait_exit(env, timeout_s, &st)) {
        harness_kill9(env);
        char *ctx = harness_context(env);
        harness_fail(file, line, "kumod did not exit within %d s\n%s", timeout_s, ctx);
    }
    reap_group(env);
    if (output)
        *output = harness_output(env);
    return st;
}

int harness_stop(struct harness_env *env, int *killed)
{
    int st = -1;
    if (killed)
        *killed = 0;
    if (env->pid) {
        kill(env->pid, SIGTERM);
        if (!harness_wait_exit(env, HARNESS_STOP_TIMEOUT, &st)) {
            kill(-env->pgid, SIGKILL);
            while (waitpid(env->pid, &st, 0) < 0 && errno == EINTR)
                ;
            env->last_status = st;
            env->pid = 0;
            if (killed)
                *killed = 1;
        }
    }
    reap_group(env);
    return st;
}

void harness_kill9(struct harness_env *env)
{
    if (env->pgid)
        kill(-env->pgid, SIGKILL);
    if (env->pid) {
        int st;
        while (waitpid(env->pid, &st, 0) < 0 && errno == EINTR)
            ;
        env->last_status = st;
        env->pid = 0;
    }
    if (env->pgid) {
        /* the rest of the group dies asynchronously; wait for it */
        double end = harness_now_s() + 5.0;
        while (harness_pgrp_live(env->pgid, NULL, 0) > 0 && harness_now_s() < end)
            harness_pause_ms(20);
        reg_del(env->pgid);
        env->pgid = 0;
    }
}

char *harness_output(const struct harness_env *env)
{
    char *s = env->out[0] ? harness_slurp(env->out, NULL) : NULL;
    return s ? s : xstrdup("");
}

int harness_regex_match(const char *text, const char *regex, int icase)
{
    regex_t re;
    if (regcomp(&re, regex, REG_EXTENDED | REG_NOSUB | REG_NEWLINE | (icase ? REG_ICASE : 0)))
        return 0;
    int ok = regexec(&re, text, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

int harness_output_wait_regex(const struct harness_env *env, const char *regex, int timeout_s)
{
    double end = harness_now_s() + timeout_s;
    for (;;) {
        char *out = harness_output(env);
        int ok = harness_regex_match(out, regex, 0);
        free(out);
        if (ok)
            return 1;
        if (harness_now_s() >= end)
            return 0;
        harness_pause_ms(100);
    }
}

/* ---- /proc -------------------------------------------------------------- */

struct proc_info {
    pid_t pid, ppid, pgrp;
    char state;
    char comm[64];
};

/* Calls fn for every process; stops when fn returns non-zero. */
static void proc_each(int (*fn)(const struct proc_info *, void *), void *arg)
{
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        char path[300], buf[1024];
        snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = 0;
        char *l = strchr(buf, '('), *r = strrchr(buf, ')');
        if (!l || !r || r < l)
            continue;
        struct proc_info pi = { 0 };
        pi.pid = (pid_t)atoi(buf);
        size_t cl = (size_t)(r - l - 1);
        if (cl >= sizeof pi.comm)
            cl = sizeof pi.comm - 1;
        memcpy(pi.comm, l + 1, cl);
        pi.comm[cl] = 0;
        int ppid = 0, pgrp = 0;
        if (sscanf(r + 1, " %c %d %d", &pi.state, &ppid, &pgrp) != 3)
            continue;
        pi.ppid = (pid_t)ppid;
        pi.pgrp = (pid_t)pgrp;
        if (fn(&pi, arg))
            break;
    }
    closedir(d);
}

struct pgrp_arg {
    pid_t want;
    int count;
    char *desc;
    size_t desc_len, used;
    const char *name;
    pid_t *pids;
    int max;
};

static void desc_add(struct pgrp_arg *a, const struct proc_info *pi)
{
    if (!a->desc || a->used + 1 >= a->desc_len)
        return;
    int n = snprintf(a->desc + a->used, a->desc_len - a->used, "%s%d %s (%c)",
                     a->used ? ", " : "", (int)pi->pid, pi->comm, pi->state);
    if (n > 0)
        a->used += (size_t)n;
    if (a->used >= a->desc_len)
        a->used = a->desc_len - 1;
}

/* A zombie thread-group leader whose other threads are still exiting (and
 * so still hold its descriptors, e.g. a listening socket) counts as live. */
static int threads_live(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int live = 0;
    struct dirent *de;
    while (!live && (de = readdir(d))) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        char sp[320], buf[512];
        snprintf(sp, sizeof sp, "/proc/%d/task/%s/stat", (int)pid, de->d_name);
        int fd = open(sp, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = 0;
        char *r = strrchr(buf, ')');
        if (r && r[1] == ' ' && r[2] != 'Z' && r[2] != 'X')
            live = 1;
    }
    closedir(d);
    return live;
}

static int pgrp_cb(const struct proc_info *pi, void *arg)
{
    struct pgrp_arg *a = arg;
    if (pi->pgrp == a->want &&
        ((pi->state != 'Z' && pi->state != 'X') || threads_live(pi->pid))) {
        a->count++;
        desc_add(a, pi);
    }
    return 0;
}

int harness_pgrp_live(pid_t pgid, char *desc, size_t desc_len)
{
    struct pgrp_arg a = { .want = pgid, .desc = desc, .desc_len = desc_len };
    if (desc && desc_len)
        desc[0] = 0;
    if (pgid <= 1)
        return 0;
    proc_each(pgrp_cb, &a);
    return a.count;
}

static int child_cb(const struct proc_info *pi, void *arg)
{
    struct pgrp_arg *a = arg;
    if (pi->ppid != a->want || pi->state == 'Z' || pi->state == 'X')
        return 0;
    if (a->name && strcmp(pi->comm, a->name))
        return 0;
    if (a->pids && a->count < a->max)
        a->pids[a->count] = pi->pid;
    a->count++;
    desc_add(a, pi);
    return 0;
}

int harness_children(pid_t pid, const char *name, pid_t *pids, int max)
{
    struct pgrp_arg a = { .want = pid, .name = name, .pids = pids, .max = max };
    proc_each(child_cb, &a);
    return a.count;
}

int harness_wait_children(pid_t pid, const char *name, int want, pid_t *pids, int max, int timeout_s)
{
    double end = harness_now_s() + timeout_s;
    int have;
    while ((have = harness_children(pid, name, pids, max)) != want && harness_now_s() < end)
        harness_pause_ms(50);
    return have;
}

void harness_children_desc(pid_t pid, char *desc, size_t desc_len)
{
    struct pgrp_arg a = { .want = pid, .desc = desc, .desc_len = desc_len };
    if (desc_len)
        desc[0] = 0;
    proc_each(child_cb, &a);
}

/* ---- spool and logs ----------------------------------------------------- */

struct strv {
    char **v;
    size_t n, cap;
};

static void strv_push(struct strv *s, char *str)
{
    if (s->n + 2 > s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = str;
    s->v[s->n] = NULL;
}

static void list_rec(const char *base, const char *rel, struct strv *out)
{
    char *path = rel[0] ? xasprintf("%s/%s", base, rel) : xstrdup(base);
    DIR *d = opendir(path);
    if (!d) {
        free(path);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *sub = rel[0] ? xasprintf("%s/%s", rel, de->d_name) : xstrdup(de->d_name);
        char *full = xasprintf("%s/%s", base, sub);
        struct stat st;
        if (lstat(full, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                list_rec(base, sub, out);
                free(sub);
            } else if (S_ISREG(st.st_mode)) {
                strv_push(out, sub);
            } else {
                free(sub);
            }
        } else {
            free(sub);
        }
        free(full);
    }
    closedir(d);
    free(path);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **harness_list_files(const struct harness_env *env, const char *rel)
{
    struct strv out = { 0 };
    char *base = harness_path(env, rel);
    list_rec(base, "", &out);
    free(base);
    if (!out.v) {
        out.v = xmalloc(sizeof *out.v);
        out.v[0] = NULL;
    }
    qsort(out.v, out.n, sizeof *out.v, cmp_str);
    return out.v;
}

void harness_strv_free(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

size_t harness_strv_len(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

struct lookup {
    const char *id;
    int hit;
    struct spool_loc loc;
    size_t n;
    char *ids;
    size_t ids_len;
};

static void lookup_found(void *arg, const char *id, const struct spool_loc *loc,
                         const char *meta, size_t meta_len)
{
    (void)meta;
    (void)meta_len;
    struct lookup *lk = arg;
    lk->n++;
    if (lk->id && strcmp(id, lk->id) == 0) {
        lk->hit = 1;
        lk->loc = *loc;
    }
    if (!lk->id && lk->n <= 50) {
        lk->ids = realloc(lk->ids, lk->ids_len + 80);
        if (!lk->ids)
            abort();
        lk->ids_len += (size_t)sprintf(lk->ids + lk->ids_len, "  %s in segment %s\n", id,
                                       spool_seg_name(loc->seg));
    }
}

static int spool_walk(const char *data, const char *meta, struct spool *sp, struct lookup *lk)
{
    char err[300];
    int rc = spool_open(sp, data, meta, err, sizeof err);
    if (rc == 0 && spool_list(sp, lookup_found, lk, err, sizeof err) != 0) {
        spool_close(sp);
        rc = -1;
    }
    if (rc != 0)
        fprintf(stderr, "harness: the spool %s, %s: %s\n", data, meta, err);
    return rc;
}

int harness_spool_lookup_in(const char *data, const char *meta, const char *id, int read_bytes,
                            struct harness_spooled *out)
{
    memset(out, 0, sizeof *out);
    struct spool sp;
    struct lookup lk = { .id = id };
    if (spool_walk(data, meta, &sp, &lk) != 0)
        return 0;
    if (lk.hit) {
        const char *name = spool_seg_name(lk.loc.seg);
        out->data_path = spool_data_path(&sp, &lk.loc);
        out->meta_path = xasprintf("%s/seg/%s%s", meta, name, lk.loc.meta_in_journal ? ".j" : "");
        out->data_off = lk.loc.data_off;
        out->meta_off = lk.loc.meta_off;
        out->dlen = (size_t)lk.loc.data_len;
        out->mlen = lk.loc.meta_len;
        char err[300];
        if (read_bytes && (spool_read_data(&sp, &lk.loc, &out->data, &out->dlen, err, sizeof err) != 0 ||
                           spool_read_meta(&sp, &lk.loc, &out->meta, &out->mlen, err, sizeof err) != 0)) {
            fprintf(stderr, "harness: message %s: %s\n", id, err);
            harness_spooled_free(out);
            lk.hit = 0;
        }
    }
    spool_close(&sp);
    return lk.hit;
}

int harness_spool_lookup(const struct harness_env *env, const char *id, int read_bytes,
                         struct harness_spooled *out)
{
    char *d = xasprintf("%s/spool/data", env->dir), *m = xasprintf("%s/spool/meta", env->dir);
    int rc = harness_spool_lookup_in(d, m, id, read_bytes, out);
    free(d);
    free(m);
    return rc;
}

void harness_spooled_free(struct harness_spooled *s)
{
    free(s->data);
    free(s->meta);
    free(s->data_path);
    free(s->meta_path);
    memset(s, 0, sizeof *s);
}

char *harness_spool_ids(const struct harness_env *env)
{
    struct spool sp;
    struct lookup lk = { 0 };
    char *d = xasprintf("%s/spool/data", env->dir), *m = xasprintf("%s/spool/meta", env->dir);
    int rc = spool_walk(d, m, &sp, &lk);
    free(d);
    free(m);
    if (rc != 0)
        return xasprintf("(the spool under %s cannot be read)\n", env->dir);
    spool_close(&sp);
    char *r = xasprintf("%zu message(s) in the spool%s\n%s", lk.n, lk.n > 50 ? ", the first 50:" : ":",
                        lk.ids ? lk.ids : "");
    free(lk.ids);
    return r;
}

static char *read_log_file(const char *path, size_t *len)
{
    char *data = harness_slurp(path, len);
    if (!data || *len < 4)
        return data;
    const unsigned char *u = (const unsigned char *)data;
    if (u[0] == 0x28 && u[1] == 0xb5 && u[2] == 0x2f && u[3] == 0xfd) {
        /* KumoMTA writes zstd segments; accept those too. */
        free(data);
        char *cmd = xasprintf("zstd -dcq < '%s' 2>/dev/null", path);
        FILE *p = popen(cmd, "r");
        free(cmd);
        if (!p)
            return NULL;
        size_t cap = 4096, n = 0;
        data = xmalloc(cap);
        size_t r;
        while ((r = fread(data + n, 1, cap - n - 1, p)) > 0) {
            n += r;
            if (cap - n < 2) {
                cap *= 2;
                data = xrealloc(data, cap);
            }
        }
        pclose(p);
        data[n] = 0;
        *len = n;
    }
    return data;
}

cJSON *harness_logs_read(const struct harness_env *env, int *bad)
{
    cJSON *arr = cJSON_CreateArray();
    int nbad = 0;
    char **files = harness_list_files(env, "logs");
    for (char **f = files; *f; f++) {
        char *path = xasprintf("%s/logs/%s", env->dir, *f);
        size_t len = 0;
        char *data = read_log_file(path, &len);
        free(path);
        if (!data)
            continue;
        size_t start = 0;
        while (start < len) {
            char *nl = memchr(data + start, '\n', len - start);
            size_t end = nl ? (size_t)(nl - data) : len;
            size_t l = end - start;
            if (l && data[start + l - 1] == '\r')
                l--;
            if (l) {
                cJSON *obj = cJSON_ParseWithLength(data + start, l);
                if (obj && cJSON_IsObject(obj))
                    cJSON_AddItemToArray(arr, obj);
                else {
                    cJSON_Delete(obj);
                    nbad++;
                }
            }
            start = end + 1;
        }
        free(data);
    }
    harness_strv_free(files);
    if (bad)
        *bad = nbad;
    return arr;
}

const char *harness_json_str(const cJSON *obj, const char *name)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

cJSON *harness_log_wait_pred(const struct harness_env *env, const char *type,
                             int (*pred)(const cJSON *rec, void *arg), void *arg)
{
    double end = harness_now_s() + HARNESS_LOG_TIMEOUT;
    for (;;) {
        cJSON *arr = harness_logs_read(env, NULL);
        cJSON *rec;
        cJSON_ArrayForEach(rec, arr) {
            const char *t = harness_json_str(rec, "type");
            if (t && !strcmp(t, type) && (!pred || pred(rec, arg))) {
                cJSON *copy = cJSON_Duplicate(rec, 1);
                cJSON_Delete(arr);
                return copy;
            }
        }
        cJSON_Delete(arr);
        if (harness_now_s() >= end)
            return NULL;
        harness_pause_ms(100);
    }
}

static int pred_id(const cJSON *rec, void *arg)
{
    const char *id = harness_json_str(rec, "id");
    return id && !strcmp(id, (const char *)arg);
}

cJSON *harness_log_wait(const struct harness_env *env, const char *type, const char *id)
{
    return harness_log_wait_pred(env, type, id ? pred_id : NULL, (void *)id);
}

char *harness_logs_summary(const struct harness_env *env)
{
    int bad = 0;
    cJSON *arr = harness_logs_read(env, &bad);
    char **files = harness_list_files(env, "logs");
    size_t cap = 4096, len = 0;
    char *s = xmalloc(cap);
    len += (size_t)snprintf(s, cap, "log dir %s/logs: %zu file(s), %d record(s), %d"
                            " unparsable line(s)\n", env->dir, harness_strv_len(files),
                            cJSON_GetArraySize(arr), bad);
    harness_strv_free(files);
    const cJSON *rec;
    int shown = 0;
    cJSON_ArrayForEach(rec, arr) {
        if (++shown > 20) {
            snprintf(s + len, cap - len, "  ...\n");
            break;
        }
        char *txt = cJSON_PrintUnformatted(rec);
        char line[400];
        snprintf(line, sizeof line, "  %.380s%s\n", txt ? txt : "?",
                 txt && strlen(txt) > 380 ? "..." : "");
        free(txt);
        size_t l = strlen(line);
        if (len + l + 16 >= cap)
            break;
        memcpy(s + len, line, l + 1);
        len += l;
    }
    cJSON_Delete(arr);
    return s;
}

/* ---- kumoctl and the test tools ---------------------------------------- */

int harness_kumoctl(const struct harness_env *env, const char *args, char **out)
{
	char *sock = harness_path(env, "spool/kumod.sock");
	char *prog = harness_bin_path("kumoctl");
	char line[8192];
	snprintf(line, sizeof line, "'%s' --socket '%s' %s 2>&1", prog, sock, args);
	free(prog);
	free(sock);
	FILE *p = popen(line, "r");
	if (!p) {
		if (out)
			*out = strdup("popen failed");
		return -1;
	}
	size_t n = fread(line, 1, sizeof line - 1, p);
	line[n] = 0;
	int st = pclose(p);
	if (out)
		*out = strdup(line);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

pid_t harness_tool_start_at(const char *file, int line, const char *name, int *port, const char *const argv[])
{
	const char *dir = getenv("KUMO_TOOLS");
	char path[4096], portstr[16];
	snprintf(path, sizeof path, "%s/%s", dir ? dir : "build/t", name);
	snprintf(portstr, sizeof portstr, "%d", *port);
	size_t n = 0;
	while (argv && argv[n])
		n++;
	const char **av = calloc(n + 4, sizeof *av);
	av[0] = path;
	av[1] = "-p";
	av[2] = portstr;
	for (size_t i = 0; i < n; i++)
		av[3 + i] = argv[i];
	int fds[2];
	if (pipe(fds) != 0)
		harness_fail(file, line, "pipe: %s", strerror(errno));
	pid_t pid = fork();
	if (pid == 0) {
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);  /* a failed test leaves no tool behind */
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execv(path, (char *const *)av);
		fprintf(stderr, "cannot run %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	free(av);
	close(fds[1]);
	char buf[256];
	size_t got = 0;
	time_t deadline = time(NULL) + 10;
	while (time(NULL) < deadline && got < sizeof buf - 1) {
		struct timeval tv = { 1, 0 };
		fd_set rs;
		FD_ZERO(&rs);
		FD_SET(fds[0], &rs);
		if (select(fds[0] + 1, &rs, NULL, NULL, &tv) <= 0)
			continue;
		ssize_t r = read(fds[0], buf + got, sizeof buf - 1 - got);
		if (r <= 0)
			break;
		got += (size_t)r;
		buf[got] = 0;
		if (strchr(buf, '\n'))
			break;
	}
	close(fds[0]);
	buf[got] = 0;
	int p = 0;
	if (sscanf(buf, "ready %d", &p) != 1 || p <= 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		harness_fail(file, line, "%s did not start (it printed '%s')", path, buf);
	}
	*port = p;
	return pid;
}

void harness_tool_stop(pid_t pid)
{
	if (pid <= 0)
		return;
	kill(pid, SIGTERM);
	for (int i = 0; i < 50; i++) {
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return;
		usleep(100000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

/* ---- /proc probes for the fault suite ----------------------------------- */

static long status_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t fl = strlen(field);
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, fl) && line[fl] == ':') {
            kb = strtol(line + fl + 1, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

struct rss_arg {
    pid_t want;
    long total;
    struct harness_rss *per;
    int max, n;
};

static int rss_cb(const struct proc_info *pi, void *arg)
{
    struct rss_arg *a = arg;
    if (pi->pgrp != a->want || pi->state == 'Z' || pi->state == 'X')
        return 0;
    long kb = status_kb(pi->pid, "VmRSS");
    if (kb < 0)
        return 0;
    a->total += kb;
    if (a->per && a->n < a->max) {
        a->per[a->n].pid = pi->pid;
        snprintf(a->per[a->n].comm, sizeof a->per[a->n].comm, "%s", pi->comm);
        a->per[a->n].kb = kb;
    }
    a->n++;
    return 0;
}

long harness_pgrp_rss_kb(pid_t pgid, struct harness_rss *per, int max, int *n)
{
    struct rss_arg a = { .want = pgid, .per = per, .max = max };
    if (pgid > 1)
        proc_each(rss_cb, &a);
    if (n)
        *n = a.n < max || !per ? a.n : max;
    return a.total;
}

/* The inode of the socket 127.0.0.1:port <-> 127.0.0.1:peer_port, or 0. */
static unsigned long tcp_inode(int port, int peer_port)
{
    FILE *f = fopen("/proc/net/tcp", "re");
    if (!f)
        return 0;
    char line[512];
    unsigned long found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned la, lp, ra, rp, st;
        unsigned long inode;
        /* sl: local rem st tx:rx tr:when retrnsmt uid timeout inode */
        if (sscanf(line, " %*d: %x:%x %x:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &la, &lp, &ra,
                   &rp, &st, &inode) != 6)
            continue;
        if ((int)lp == port && (int)rp == peer_port)
            found = inode;
    }
    fclose(f);
    return found;
}

pid_t harness_socket_owner(const pid_t *pids, int n, int port, int peer_port)
{
    unsigned long inode = tcp_inode(port, peer_port);
    if (!inode)
        return 0;
    char want[64];
    snprintf(want, sizeof want, "socket:[%lu]", inode);
    for (int i = 0; i < n; i++) {
        char dir[64];
        snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pids[i]);
        DIR *d = opendir(dir);
        if (!d)
            continue;
        struct dirent *de;
        int hit = 0;
        while (!hit && (de = readdir(d))) {
            char path[340], target[128];
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            ssize_t l = readlink(path, target, sizeof target - 1);
            if (l > 0) {
                target[l] = 0;
                hit = !strcmp(target, want);
            }
        }
        closedir(d);
        if (hit)
            return pids[i];
    }
    return 0;
}

int harness_proc_ids(pid_t pid, const char *field, unsigned ids[4])
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t fl = strlen(field);
    int ok = 0;
    while (!ok && fgets(line, sizeof line, f))
        if (!strncmp(line, field, fl) && line[fl] == ':')
            ok = sscanf(line + fl + 1, "%u %u %u %u", &ids[0], &ids[1], &ids[2], &ids[3]) == 4;
    fclose(f);
    return ok;
}
