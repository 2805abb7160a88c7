/*
 * libpq-bench: the libpq 18 side of pqcancel's benchmark suite (driven by bench/run.ts over stdin/stdout).
 *
 * It holds its own libpq sessions, runs `SELECT pg_sleep(60)` on them, waits (through a monitor connection, outside
 * the timed region) until the backend is inside pg_sleep, and then times a cancel with CLOCK_MONOTONIC:
 *
 *   dispatch = PQcancelCreate .. PQcancelBlocking / PQcancelStart+PQcancelPoll loop / PQgetCancel+PQcancel .. finish
 *   e2e      = the same start .. the 57014 error arrived on the session's socket (a watcher thread polls it from
 *              before t0, so the result is seen while the cancel call is still waiting for the server's close)
 *
 * Protocol (one command per line on stdin, one reply line on stdout; errors are `err <text>`):
 *
 *   monitor <conninfo>                  -> ok
 *   open <slot> <conninfo>              -> ok <pid> <protocol 30000|30002> <ssl 0|1>
 *   sample <slot> <blocking|poll|legacy> -> sample <dispatch_ns> <e2e_ns> <sqlstate>
 *   openmany <n> <appname> <conninfo>   -> ok <n>        (the burst group; replaces any previous one)
 *   burst <blocking|poll|legacy>        -> burst <wall_ns> <rss_before_kb> <peak_rss_kb> <ok> <failed>
 *   closemany                           -> ok
 *   quit
 *
 * libpq 18's cancel API is declared here because the system header is PostgreSQL 15's.
 * Build: gcc -O2 -o libpq-bench libpq-bench.c -I/usr/include/postgresql -L<libdir> -Wl,-rpath,<libdir> -lpq -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- libpq 17+ prototypes (absent from the PG 15 header) ---- */
typedef struct pg_cancel_conn PGcancelConn;
extern PGcancelConn *PQcancelCreate(PGconn *conn);
extern int PQcancelStart(PGcancelConn *cancelConn);
extern int PQcancelBlocking(PGcancelConn *cancelConn);
extern PostgresPollingStatusType PQcancelPoll(PGcancelConn *cancelConn);
extern ConnStatusType PQcancelStatus(const PGcancelConn *cancelConn);
extern int PQcancelSocket(const PGcancelConn *cancelConn);
extern char *PQcancelErrorMessage(const PGcancelConn *cancelConn);
extern void PQcancelReset(PGcancelConn *cancelConn);
extern void PQcancelFinish(PGcancelConn *cancelConn);
extern int PQfullProtocolVersion(const PGconn *conn);

#define MAX_SLOTS 64

static PGconn *slots[MAX_SLOTS];
static PGconn *monitor_conn;
static PGconn **group;
static int group_n;
static char group_app[128];

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

/* first line of a libpq message, for one-line replies */
static const char *oneline(const char *msg) {
  static char buf[512];
  size_t i = 0;
  for (; msg != NULL && msg[i] != '\0' && msg[i] != '\n' && i < sizeof buf - 1; i++) buf[i] = msg[i];
  buf[i] = '\0';
  return buf;
}

static long proc_status_kb(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL) return -1;
  char line[256];
  long value = -1;
  size_t len = strlen(field);
  while (fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, field, len) == 0 && line[len] == ':') {
      value = strtol(line + len + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return value;
}

/* resets VmHWM (peak RSS) to the current RSS */
static void reset_peak_rss(void) {
  FILE *f = fopen("/proc/self/clear_refs", "w");
  if (f == NULL) return;
  fputs("5", f);
  fclose(f);
}

/* run a query on the monitor, return the first column of the first row as an integer (or -1) */
static long monitor_scalar(const char *sql) {
  PGresult *res = PQexec(monitor_conn, sql);
  long value = -1;
  if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0) value = strtol(PQgetvalue(res, 0, 0), NULL, 10);
  PQclear(res);
  return value;
}

/* waits until `expected` backends selected by `where` are inside pg_sleep (untimed) */
static int wait_sleeping(const char *where, long expected) {
  char sql[512];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND %s", where);
  int64_t deadline = now_ns() + 30LL * 1000000000LL;
  while (now_ns() < deadline) {
    if (monitor_scalar(sql) >= expected) return 0;
    usleep(200);
  }
  return -1;
}

/* ---- one cancel, in each of libpq's three ways; returns 0 when the request was dispatched ---- */

static int cancel_blocking(PGconn *conn, char *err, size_t errlen) {
  PGcancelConn *cc = PQcancelCreate(conn);
  int ok = PQcancelBlocking(cc);
  if (!ok) snprintf(err, errlen, "%s", oneline(PQcancelErrorMessage(cc)));
  PQcancelFinish(cc);
  return ok ? 0 : -1;
}

static int cancel_poll(PGconn *conn, char *err, size_t errlen) {
  PGcancelConn *cc = PQcancelCreate(conn);
  if (!PQcancelStart(cc)) {
    snprintf(err, errlen, "%s", oneline(PQcancelErrorMessage(cc)));
    PQcancelFinish(cc);
    return -1;
  }
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  for (;;) {
    struct pollfd p = {.fd = PQcancelSocket(cc), .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
    if (poll(&p, 1, 30000) <= 0) {
      snprintf(err, errlen, "poll timeout");
      PQcancelFinish(cc);
      return -1;
    }
    st = PQcancelPoll(cc);
    if (st == PGRES_POLLING_OK) break;
    if (st == PGRES_POLLING_FAILED) {
      snprintf(err, errlen, "%s", oneline(PQcancelErrorMessage(cc)));
      PQcancelFinish(cc);
      return -1;
    }
  }
  PQcancelFinish(cc);
  return 0;
}

static int cancel_legacy(PGconn *conn, char *err, size_t errlen) {
  PGcancel *c = PQgetCancel(conn);
  char buf[256];
  int ok = PQcancel(c, buf, sizeof buf);
  if (!ok) snprintf(err, errlen, "%s", oneline(buf));
  PQfreeCancel(c);
  return ok ? 0 : -1;
}

typedef int (*cancel_fn)(PGconn *, char *, size_t);

static cancel_fn mode_fn(const char *mode) {
  if (strcmp(mode, "blocking") == 0) return cancel_blocking;
  if (strcmp(mode, "poll") == 0) return cancel_poll;
  if (strcmp(mode, "legacy") == 0) return cancel_legacy;
  return NULL;
}

/* reads the query's first result; copies its SQLSTATE (or "00000"); drains to NULL */
static void finish_query(PGconn *conn, char *sqlstate, int64_t *at) {
  PGresult *res = PQgetResult(conn);
  if (at != NULL) *at = now_ns();
  const char *state = res == NULL ? NULL : PQresultErrorField(res, PG_DIAG_SQLSTATE);
  snprintf(sqlstate, 6, "%s", state != NULL ? state : (res == NULL ? "NULL" : "00000"));
  PQclear(res);
  while ((res = PQgetResult(conn)) != NULL) PQclear(res);
}

/*
 * The end-to-end watcher: a thread blocked in poll() on the cancelled session's socket from before t0, so the moment
 * the server's 57014 arrives is seen while the cancel call is still waiting for the server to close the cancel
 * connection (the server sends the query's error ~0.4 ms before that close). The session's result is read (and its
 * SQLSTATE checked) only after the cancel returned; nothing touches the PGconn concurrently.
 */
struct watcher {
  pthread_t thread;
  int fd;
  int ready;
  int64_t at;
};

static void *watcher_main(void *arg) {
  struct watcher *w = arg;
  struct pollfd p = {.fd = w->fd, .events = POLLIN};
  __atomic_store_n(&w->ready, 1, __ATOMIC_RELEASE);
  w->at = poll(&p, 1, 30000) > 0 ? now_ns() : -1;
  return NULL;
}

static void cmd_sample(int slot, const char *mode) {
  cancel_fn fn = mode_fn(mode);
  PGconn *conn = slot >= 0 && slot < MAX_SLOTS ? slots[slot] : NULL;
  if (fn == NULL || conn == NULL) return reply("err bad sample arguments");
  if (!PQsendQuery(conn, "SELECT pg_sleep(60)")) return reply("err %s", oneline(PQerrorMessage(conn)));
  char where[64];
  snprintf(where, sizeof where, "pid = %d", PQbackendPID(conn));
  if (wait_sleeping(where, 1) != 0) return reply("err backend never reached pg_sleep");
  struct watcher w = {.fd = PQsocket(conn), .ready = 0, .at = -1};
  if (pthread_create(&w.thread, NULL, watcher_main, &w) != 0) return reply("err cannot start the watcher thread");
  while (!__atomic_load_n(&w.ready, __ATOMIC_ACQUIRE)) sched_yield();
  usleep(50); /* let the watcher enter poll() before t0 (untimed) */
  char err[512] = "";
  int64_t t0 = now_ns();
  int rc = fn(conn, err, sizeof err);
  int64_t t1 = now_ns();
  pthread_join(w.thread, NULL);
  char sqlstate[8];
  int64_t t2;
  finish_query(conn, sqlstate, &t2);
  if (rc != 0) return reply("err cancel failed: %s", err);
  reply("sample %lld %lld %s", (long long)(t1 - t0), (long long)((w.at > 0 ? w.at : t2) - t0), sqlstate);
}

static void cmd_open(int slot, const char *conninfo) {
  if (slot < 0 || slot >= MAX_SLOTS) return reply("err bad slot");
  if (slots[slot] != NULL) PQfinish(slots[slot]);
  PGconn *conn = PQconnectdb(conninfo);
  if (PQstatus(conn) != CONNECTION_OK) {
    reply("err %s", oneline(PQerrorMessage(conn)));
    PQfinish(conn);
    slots[slot] = NULL;
    return;
  }
  slots[slot] = conn;
  reply("ok %d %d %d", PQbackendPID(conn), PQfullProtocolVersion(conn), PQsslInUse(conn));
}

static void close_group(void) {
  for (int i = 0; i < group_n; i++) PQfinish(group[i]);
  free(group);
  group = NULL;
  group_n = 0;
}

/* opens n sessions concurrently (PQconnectStart + PQconnectPoll), tagged with application_name */
static void cmd_openmany(int n, const char *app, const char *conninfo) {
  close_group();
  snprintf(group_app, sizeof group_app, "%s", app);
  char full[2048];
  snprintf(full, sizeof full, "%s application_name=%s", conninfo, app);
  group = calloc((size_t)n, sizeof *group);
  PostgresPollingStatusType *st = calloc((size_t)n, sizeof *st);
  struct pollfd *fds = calloc((size_t)n, sizeof *fds);
  int *idx = calloc((size_t)n, sizeof *idx);
  group_n = n;
  const int window = 64; /* connections being established at once */
  int next = 0, pending = 0, done = 0, failed = 0;
  char firsterr[512] = "";
  while (done < n) {
    while (pending < window && next < n) {
      group[next] = PQconnectStart(full);
      st[next] = PGRES_POLLING_WRITING;
      if (group[next] == NULL || PQstatus(group[next]) == CONNECTION_BAD) {
        failed++;
        done++;
      } else {
        pending++;
      }
      next++;
    }
    int k = 0;
    for (int i = 0; i < next; i++) {
      if (group[i] == NULL || st[i] == PGRES_POLLING_OK || st[i] == PGRES_POLLING_FAILED) continue;
      fds[k].fd = PQsocket(group[i]);
      fds[k].events = st[i] == PGRES_POLLING_READING ? POLLIN : POLLOUT;
      fds[k].revents = 0;
      idx[k++] = i;
    }
    if (k == 0) break;
    if (poll(fds, (nfds_t)k, 30000) <= 0) break;
    for (int j = 0; j < k; j++) {
      if (fds[j].revents == 0) continue;
      int i = idx[j];
      st[i] = PQconnectPoll(group[i]);
      if (st[i] == PGRES_POLLING_OK || st[i] == PGRES_POLLING_FAILED) {
        pending--;
        done++;
        if (st[i] == PGRES_POLLING_FAILED) {
          if (failed++ == 0) snprintf(firsterr, sizeof firsterr, "%s", oneline(PQerrorMessage(group[i])));
        }
      }
    }
  }
  free(st);
  free(fds);
  free(idx);
  if (failed > 0 || done < n) {
    close_group();
    return reply("err %d of %d sessions failed: %s", failed + (n - done), n, firsterr);
  }
  reply("ok %d", n);
}

/* ---- burst ---- */

struct worker {
  pthread_t thread;
  PGconn *conn;
  cancel_fn fn;
  int rc;
};

static void *worker_main(void *arg) {
  struct worker *w = arg;
  char err[512];
  w->rc = w->fn(w->conn, err, sizeof err);
  return NULL;
}

/* collects every group session's result (one poll loop), optionally driving PQcancelPoll for `ccs` at the same time */
static void cmd_burst(const char *mode) {
  cancel_fn fn = mode_fn(mode);
  int n = group_n;
  if (fn == NULL || n == 0) return reply("err bad burst arguments");
  for (int i = 0; i < n; i++) {
    if (!PQsendQuery(group[i], "SELECT pg_sleep(60)")) return reply("err %s", oneline(PQerrorMessage(group[i])));
  }
  char where[256];
  snprintf(where, sizeof where, "application_name = '%s'", group_app);
  if (wait_sleeping(where, n) != 0) return reply("err burst sessions never all reached pg_sleep");

  int usepoll = fn == cancel_poll;
  struct worker *workers = usepoll ? NULL : calloc((size_t)n, sizeof *workers);
  PGcancelConn **ccs = usepoll ? calloc((size_t)n, sizeof *ccs) : NULL;
  PostgresPollingStatusType *cst = usepoll ? calloc((size_t)n, sizeof *cst) : NULL;
  struct pollfd *fds = calloc((size_t)(2 * n), sizeof *fds);
  int *idx = calloc((size_t)(2 * n), sizeof *idx);
  char *seen = calloc((size_t)n, 1);
  int ok = 0, failed = 0, cancels_open = 0;

  reset_peak_rss();
  long rss_before = proc_status_kb("VmRSS");
  int64_t t0 = now_ns();
  if (usepoll) {
    for (int i = 0; i < n; i++) {
      ccs[i] = PQcancelCreate(group[i]);
      if (PQcancelStart(ccs[i])) {
        cst[i] = PGRES_POLLING_WRITING;
        cancels_open++;
      } else {
        cst[i] = PGRES_POLLING_FAILED;
      }
    }
  } else {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (int i = 0; i < n; i++) {
      workers[i].conn = group[i];
      workers[i].fn = fn;
      pthread_create(&workers[i].thread, &attr, worker_main, &workers[i]);
    }
    pthread_attr_destroy(&attr);
  }
  int remaining = n;
  while (remaining > 0) {
    int k = 0;
    for (int i = 0; i < n; i++) {
      if (!seen[i]) {
        fds[k].fd = PQsocket(group[i]);
        fds[k].events = POLLIN;
        fds[k].revents = 0;
        idx[k++] = i;
      }
      if (usepoll && cst[i] != PGRES_POLLING_OK && cst[i] != PGRES_POLLING_FAILED) {
        fds[k].fd = PQcancelSocket(ccs[i]);
        fds[k].events = cst[i] == PGRES_POLLING_READING ? POLLIN : POLLOUT;
        fds[k].revents = 0;
        idx[k++] = n + i;
      }
    }
    if (poll(fds, (nfds_t)k, 30000) <= 0) break;
    for (int j = 0; j < k; j++) {
      if (fds[j].revents == 0) continue;
      int i = idx[j];
      if (i >= n) {
        i -= n;
        cst[i] = PQcancelPoll(ccs[i]);
        if (cst[i] == PGRES_POLLING_OK || cst[i] == PGRES_POLLING_FAILED) {
          cancels_open--;
          PQcancelFinish(ccs[i]);
          ccs[i] = NULL;
        }
        continue;
      }
      PGconn *c = group[i];
      if (!PQconsumeInput(c)) {
        seen[i] = 1;
        remaining--;
        failed++;
        continue;
      }
      if (PQisBusy(c)) continue;
      char sqlstate[8];
      finish_query(c, sqlstate, NULL);
      seen[i] = 1;
      remaining--;
      if (strcmp(sqlstate, "57014") == 0) ok++;
      else failed++;
    }
  }
  int64_t t1 = now_ns();
  long peak = proc_status_kb("VmHWM");
  if (!usepoll) {
    for (int i = 0; i < n; i++) pthread_join(workers[i].thread, NULL);
  } else {
    for (int i = 0; i < n; i++) {
      if (ccs[i] != NULL) PQcancelFinish(ccs[i]);
    }
  }
  /* any session whose result never came is unusable: drain what is left */
  for (int i = 0; i < n; i++) {
    if (!seen[i]) {
      char sqlstate[8];
      finish_query(group[i], sqlstate, NULL);
      failed++;
    }
  }
  free(workers);
  free(ccs);
  free(cst);
  free(fds);
  free(idx);
  free(seen);
  reply("burst %lld %ld %ld %d %d", (long long)(t1 - t0), rss_before, peak, ok, failed);
}

int main(void) {
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, stdin)) > 0) {
    if (line[len - 1] == '\n') line[--len] = '\0';
    char cmd[32] = "";
    int consumed = 0;
    if (sscanf(line, "%31s %n", cmd, &consumed) < 1) continue;
    const char *rest = line + consumed;
    if (strcmp(cmd, "quit") == 0) break;
    if (strcmp(cmd, "monitor") == 0) {
      if (monitor_conn != NULL) PQfinish(monitor_conn);
      monitor_conn = PQconnectdb(rest);
      if (PQstatus(monitor_conn) != CONNECTION_OK) reply("err %s", oneline(PQerrorMessage(monitor_conn)));
      else reply("ok");
    } else if (strcmp(cmd, "open") == 0) {
      int slot, off = 0;
      if (sscanf(rest, "%d %n", &slot, &off) < 1) reply("err usage: open <slot> <conninfo>");
      else cmd_open(slot, rest + off);
    } else if (strcmp(cmd, "sample") == 0) {
      int slot;
      char mode[16];
      if (sscanf(rest, "%d %15s", &slot, mode) < 2) reply("err usage: sample <slot> <mode>");
      else cmd_sample(slot, mode);
    } else if (strcmp(cmd, "openmany") == 0) {
      int n, off = 0;
      char app[64];
      if (sscanf(rest, "%d %63s %n", &n, app, &off) < 2 || n <= 0) reply("err usage: openmany <n> <app> <conninfo>");
      else cmd_openmany(n, app, rest + off);
    } else if (strcmp(cmd, "burst") == 0) {
      char mode[16];
      if (sscanf(rest, "%15s", mode) < 1) reply("err usage: burst <mode>");
      else cmd_burst(mode);
    } else if (strcmp(cmd, "closemany") == 0) {
      close_group();
      reply("ok");
    } else {
      reply("err unknown command %s", cmd);
    }
  }
  close_group();
  for (int i = 0; i < MAX_SLOTS; i++) {
    if (slots[i] != NULL) PQfinish(slots[i]);
  }
  if (monitor_conn != NULL) PQfinish(monitor_conn);
  free(line);
  return 0;
}
