/*
 * libpq-cancel-driver: drives libpq 18's cancel API for pqcancel's differential suite
 * (packages/node/test/LibpqDifferential.test.ts), one command per stdin line, one JSON reply line on stdout.
 *
 *   open <conninfo>   -> {"ok":1,"pid":N} | {"ok":0,"error":"..."}      (the session a cancel is created from)
 *   blocking          -> {"result":0|1,"status":"OK","error":"..."}     (PQcancelCreate + PQcancelBlocking)
 *   poll              -> {"start":0|1,"status0":"...","polls":[["WRITING","MADE"],...],"error":"..."}
 *                        (PQcancelStart, then PQcancelPoll until OK/FAILED, waiting on PQcancelSocket with poll(2);
 *                        a wait longer than 1.5 s ends the loop with ["TIMEOUT", status])
 *   reset             -> {"first":{...blocking},"second":{...blocking}} (blocking, PQcancelReset, blocking again)
 *   legacy            -> {"result":0|1,"error":"..."}                   (PQgetCancel + PQcancel, errbuf of 256)
 *   close             -> {"ok":1}
 *   quit
 *
 * No libpq header is needed: the few declarations and enum values used are libpq 18's (libpq-fe.h).
 */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct pg_conn PGconn;
typedef struct pg_cancel_conn PGcancelConn;
extern PGconn *PQconnectdb(const char *conninfo);
extern int PQstatus(const PGconn *conn);
extern char *PQerrorMessage(const PGconn *conn);
extern int PQbackendPID(const PGconn *conn);
extern void PQfinish(PGconn *conn);
extern PGcancelConn *PQcancelCreate(PGconn *conn);
extern int PQcancelStart(PGcancelConn *cancelConn);
extern int PQcancelBlocking(PGcancelConn *cancelConn);
extern int PQcancelPoll(PGcancelConn *cancelConn);
extern int PQcancelStatus(const PGcancelConn *cancelConn);
extern int PQcancelSocket(const PGcancelConn *cancelConn);
extern char *PQcancelErrorMessage(const PGcancelConn *cancelConn);
extern void PQcancelReset(PGcancelConn *cancelConn);
extern void PQcancelFinish(PGcancelConn *cancelConn);
typedef struct pg_cancel PGcancel;
extern PGcancel *PQgetCancel(PGconn *conn);
extern int PQcancel(PGcancel *cancel, char *errbuf, int errbufsize);
extern void PQfreeCancel(PGcancel *cancel);

/* ConnStatusType and PostgresPollingStatusType of libpq 18 */
static const char *status_name(int s) {
  static const char *names[] = {"OK", "BAD", "STARTED", "MADE", "AWAITING_RESPONSE", "AUTH_OK", "SETENV",
                                "SSL_STARTUP", "NEEDED", "CHECK_WRITABLE", "CONSUME", "GSS_STARTUP",
                                "CHECK_TARGET", "CHECK_STANDBY", "ALLOCATED", "AUTHENTICATING"};
  return s >= 0 && s < (int)(sizeof names / sizeof names[0]) ? names[s] : "UNKNOWN";
}
static const char *polling_name(int p) {
  static const char *names[] = {"FAILED", "READING", "WRITING", "OK", "ACTIVE"};
  return p >= 0 && p <= 4 ? names[p] : "UNKNOWN";
}
enum { POLLING_FAILED = 0, POLLING_READING = 1, POLLING_WRITING = 2, POLLING_OK = 3 };

static void json_string(const char *s) {
  putchar('"');
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    if (*p == '"' || *p == '\\') printf("\\%c", *p);
    else if (*p == '\n') printf("\\n");
    else if (*p == '\t') printf("\\t");
    else if (*p < 0x20) printf("\\u%04x", *p);
    else putchar(*p);
  }
  putchar('"');
}

static PGconn *session = NULL;

static void blocking_result(PGcancelConn *cc) {
  int result = PQcancelBlocking(cc);
  printf("{\"result\":%d,\"status\":", result);
  json_string(status_name(PQcancelStatus(cc)));
  printf(",\"error\":");
  json_string(PQcancelErrorMessage(cc));
  printf("}");
}

static void cmd_poll(void) {
  PGcancelConn *cc = PQcancelCreate(session);
  int started = PQcancelStart(cc);
  printf("{\"start\":%d,\"status0\":", started);
  json_string(status_name(PQcancelStatus(cc)));
  printf(",\"polls\":[");
  int st = POLLING_WRITING, n = 0;
  while (started && n < 50) {
    int sock = PQcancelSocket(cc);
    if (sock >= 0) {
      struct pollfd p = {.fd = sock, .events = st == POLLING_READING ? POLLIN : POLLOUT};
      int r = poll(&p, 1, 1500);
      if (r == 0) {
        printf("%s[\"TIMEOUT\",", n++ ? "," : "");
        json_string(status_name(PQcancelStatus(cc)));
        printf("]");
        break;
      }
    }
    st = PQcancelPoll(cc);
    printf("%s[", n++ ? "," : "");
    json_string(polling_name(st));
    putchar(',');
    json_string(status_name(PQcancelStatus(cc)));
    printf("]");
    if (st == POLLING_OK || st == POLLING_FAILED) break;
  }
  printf("],\"error\":");
  json_string(PQcancelErrorMessage(cc));
  printf("}\n");
  PQcancelFinish(cc);
}

int main(void) {
  static char line[8192];
  setvbuf(stdout, NULL, _IOLBF, 0);
  while (fgets(line, sizeof line, stdin) != NULL) {
    line[strcspn(line, "\n")] = 0;
    if (strncmp(line, "open ", 5) == 0) {
      if (session) PQfinish(session);
      session = PQconnectdb(line + 5);
      if (PQstatus(session) == 0) printf("{\"ok\":1,\"pid\":%d}\n", PQbackendPID(session));
      else {
        printf("{\"ok\":0,\"error\":");
        json_string(PQerrorMessage(session));
        printf("}\n");
      }
    } else if (strcmp(line, "blocking") == 0) {
      PGcancelConn *cc = PQcancelCreate(session);
      blocking_result(cc);
      printf("\n");
      PQcancelFinish(cc);
    } else if (strcmp(line, "poll") == 0) {
      cmd_poll();
    } else if (strcmp(line, "reset") == 0) {
      PGcancelConn *cc = PQcancelCreate(session);
      printf("{\"first\":");
      blocking_result(cc);
      fflush(stdout);
      PQcancelReset(cc);
      printf(",\"second\":");
      blocking_result(cc);
      printf("}\n");
      PQcancelFinish(cc);
    } else if (strcmp(line, "legacy") == 0) {
      char errbuf[256] = "";
      PGcancel *cancel = PQgetCancel(session);
      int result = PQcancel(cancel, errbuf, sizeof errbuf);
      PQfreeCancel(cancel);
      printf("{\"result\":%d,\"error\":", result);
      json_string(errbuf);
      printf("}\n");
    } else if (strcmp(line, "close") == 0) {
      if (session) PQfinish(session);
      session = NULL;
      printf("{\"ok\":1}\n");
    } else if (strcmp(line, "quit") == 0) {
      break;
    } else {
      printf("{\"error\":\"unknown command\"}\n");
    }
  }
  if (session) PQfinish(session);
  return 0;
}
