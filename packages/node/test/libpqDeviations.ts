/**
 * THE table of pqcancel's remaining differences from libpq 18's cancel API (rendered in the deviation section of
 * docs/differences-from-libpq.md). The differential suite (LibpqDifferential.test.ts) checks every difference it
 * observes against it: an unlisted difference, a listed one whose values changed, or a listed one that no longer
 * occurs fails the suite, and the guide's section must be {@link renderMarkdown}'s output. Entries without
 * `observed` are differences the suite cannot see from behind a TCP proxy (documented, with their reason).
 */

export type Mode = "poll" | "blocking" | "reset" | "legacy"
export type Field = "start" | "polls" | "result" | "error" | "packets"

/** One observed difference: scenario, mode, field, and both sides' values as the suite prints them. */
export interface Observation {
  readonly scenario: string
  readonly mode: Mode
  readonly field: Field
  readonly libpq: string
  readonly pqcancel: string
}

export interface Deviation {
  readonly summary: string
  readonly libpq: string
  readonly pqcancel: string
  readonly reason: string
  readonly observed: ReadonlyArray<Observation>
}

const PREFIX = "connection to server at \"127.0.0.1\", port PORT failed: "

export const deviations: ReadonlyArray<Deviation> = [
  {
    summary: "'S' and unencrypted bytes in one segment",
    libpq: "starts the handshake and waits for it until `connect_timeout` (`timeout expired`), or forever in a poll " +
      "loop; the buffered byte is only checked once a handshake completes",
    pqcancel: "fails at once with `received unencrypted data after SSL response`, no ClientHello sent",
    reason: "Bytes after 'S' are what a buffer-stuffing attacker sends (CVE-2021-23222): libpq refuses them too, " +
      "later. Failing at once is safer and never hangs.",
    observed: [
      {
        scenario: "require-S-with-data",
        mode: "poll",
        field: "polls",
        libpq: "WRITING/MADE READING/SSL_STARTUP TIMEOUT/SSL_STARTUP",
        pqcancel: "WRITING/MADE READING/SSL_STARTUP FAILED/BAD"
      },
      {
        scenario: "require-S-with-data",
        mode: "poll",
        field: "error",
        libpq: PREFIX,
        pqcancel: `${PREFIX}received unencrypted data after SSL response\n`
      },
      {
        scenario: "require-S-with-data",
        mode: "poll",
        field: "packets",
        libpq: "SSLRequest+TLS",
        pqcancel: "SSLRequest"
      },
      {
        scenario: "require-S-with-data",
        mode: "blocking",
        field: "error",
        libpq: `${PREFIX}timeout expired\n`,
        pqcancel: `${PREFIX}received unencrypted data after SSL response\n`
      },
      {
        scenario: "require-S-with-data",
        mode: "blocking",
        field: "packets",
        libpq: "SSLRequest+TLS",
        pqcancel: "SSLRequest"
      }
    ]
  },
  {
    summary: "`PQcancelReset` after a failed encryption method",
    libpq: "remembers the failed method: with `require` the next `PQcancelBlocking` returns 0 with an empty " +
      "message and opens no connection; with `prefer` it goes straight to plaintext",
    pqcancel: "renegotiates from scratch: the next attempt tries TLS again (and succeeds when the server now " +
      "accepts it)",
    reason: "A reset object should behave like a new one (libpq's docs: reuse it for the connection's lifetime); " +
      "remembering a refusal would send later keys in plaintext under `prefer`, and makes retries useless.",
    observed: [
      {
        scenario: "reset-after-N",
        mode: "reset",
        field: "result",
        libpq: "0/BAD then 0/BAD",
        pqcancel: "0/BAD then 1/OK"
      },
      {
        scenario: "reset-after-N",
        mode: "reset",
        field: "packets",
        libpq: "SSLRequest",
        pqcancel: "SSLRequest | SSLRequest+TLS"
      },
      {
        // prefer: the first attempt gets 'N' and cancels in plaintext; after the reset the server would do TLS
        scenario: "reset-after-N-prefer",
        mode: "reset",
        field: "packets",
        libpq: "SSLRequest+CancelRequest | CancelRequest",
        pqcancel: "SSLRequest+CancelRequest | SSLRequest+TLS"
      }
    ]
  },
  {
    summary: "rejecting the server's certificate",
    libpq: "OpenSSL verifies inside the handshake and sends a TLS alert (e.g. `unknown ca`) before closing",
    pqcancel: "Node verifies once the handshake completed, then closes without an alert",
    reason: "Node's TLS API checks the chain after the handshake; the text (`SSL error: certificate verify " +
      "failed`) and the outcome (no CancelRequest ever sent) are libpq's.",
    observed: []
  },
  {
    summary: "the TLS handshake's poll steps",
    libpq: "`READING/SSL_STARTUP` once or more for the SSL response and the handshake, as the bytes happen to arrive " +
      "(the same scenario gave 1 and 2)",
    pqcancel: "exactly one `READING/SSL_STARTUP` for the response and one for the handshake (direct TLS: one)",
    reason: "Node's TLS socket reports only the completed handshake; the suite counts a run of READING/SSL_STARTUP " +
      "polls as one.",
    observed: []
  },
  {
    summary: "connecting",
    libpq: "a unix socket (or an immediately completed TCP connect) is connected within `PQcancelStart`: status " +
      "`MADE` after start; a refused connect can fail `PQcancelStart`",
    pqcancel: "Node connects asynchronously: status `STARTED` after start, `WRITING/MADE` from the first poll; " +
      "connect errors surface from the first poll",
    reason: "Node has no synchronous connect.",
    observed: [
      { scenario: "unix", mode: "poll", field: "start", libpq: "1/MADE", pqcancel: "1/STARTED" },
      {
        scenario: "unix",
        mode: "poll",
        field: "polls",
        libpq: "READING/AWAITING_RESPONSE OK/OK",
        pqcancel: "WRITING/MADE READING/AWAITING_RESPONSE OK/OK"
      }
    ]
  },
  {
    summary: "socket options",
    libpq: "sets `keepalives_interval`, `keepalives_count`, `tcp_user_timeout`",
    pqcancel: "sets keepalives and their idle time only",
    reason: "Node exposes no API for the others.",
    observed: []
  },
  {
    summary: "GSSAPI options",
    libpq: "`gsslib` picks the GSS library (Windows); `gssdelegation=1` requests credential delegation; always the " +
      "default credential cache",
    pqcancel: "`gsslib` is ignored (as by libpq everywhere but Windows); `gssdelegation=1` requests no delegation; " +
      "`NodeTransport.layerWith` can name a credential cache",
    reason: "The server's cancel path never uses delegated credentials; naming a cache is an addition.",
    observed: []
  },
  {
    summary: "server hangs up during the GSS handshake",
    libpq: "adds no text of its own there",
    pqcancel: "`server closed the connection unexpectedly` (libpq's text for a hang-up elsewhere)",
    reason: "An empty error message helps nobody.",
    observed: []
  },
  {
    summary: "GSS context failure text",
    libpq: "the Kerberos library's detailed minor status, e.g. " +
      "`Server wrongservice/localhost@REALM not found in Kerberos database`",
    pqcancel: "the same prefix and major status, the minor status without the thread-local detail: " +
      "`Server not found in Kerberos database`",
    reason: "The context step runs on a worker thread (never blocking the event loop on a KDC), and MIT keeps the " +
      "detail per thread.",
    observed: []
  },
  {
    summary: "`requirepeer` on a unix socket",
    libpq: "checks the server's user with `SO_PEERCRED`",
    pqcancel: "fails with libpq's `requirepeer parameter is not supported on this platform`",
    reason: "Node cannot read peer credentials; refusing is what libpq does where it cannot check.",
    observed: []
  },
  {
    summary: "connection service files",
    libpq: "`service=` / `PGSERVICE` read `pg_service.conf`",
    pqcancel: "fail with an `InvalidOption` naming the service",
    reason: "Pass the service's options explicitly.",
    observed: []
  },
  {
    summary: "legacy `PQcancel`",
    libpq: "blocks until the server closes, without a bound",
    pqcancel: "bounded by a 30 s timeout",
    reason: "Every wait is bounded.",
    observed: []
  }
]

const cell = (s: string) => s.replaceAll("|", "\\|").replaceAll("\n", " ")

/** The deviation table of docs/differences-from-libpq.md. */
export const renderMarkdown = (): string =>
  [
    "| difference | libpq 18 | pqcancel | why |",
    "| --- | --- | --- | --- |",
    ...deviations.map((d) => `| ${cell(d.summary)} | ${cell(d.libpq)} | ${cell(d.pqcancel)} | ${cell(d.reason)} |`)
  ].join("\n")
