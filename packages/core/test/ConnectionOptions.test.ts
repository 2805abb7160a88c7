import { assert, describe, it } from "@effect/vitest"
import { CancelError, ConnectionOptions } from "@pqcancel/core"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as util from "node:util"
import { anyString, conninfoish, uriish } from "./arbitraries.ts"

type R<A> = Result.Result<A, CancelError.InvalidOption>

const ok = <A>(r: R<A>): A => {
  if (Result.isFailure(r)) return assert.fail(`unexpected InvalidOption: ${r.failure.message}`)
  return r.success
}

const err = <A>(r: R<A>): string => {
  if (Result.isSuccess(r)) return assert.fail(`expected an InvalidOption, got ${util.inspect(r.success)}`)
  assert.instanceOf(r.failure, CancelError.InvalidOption)
  return r.failure.message
}

const parse = (s: string) => ok(ConnectionOptions.parse(s))
const parseError = (s: string) => err(ConnectionOptions.parse(s))
const resolve = (s: string, env: ConnectionOptions.Env = {}) => ok(ConnectionOptions.fromStringResult(s, env))
const resolveError = (s: string, env: ConnectionOptions.Env = {}) => err(ConnectionOptions.fromStringResult(s, env))

const tcp = (host: string | undefined, port = 5432, hostaddr?: string): ConnectionOptions.HostEntry => ({
  _tag: "Tcp",
  host,
  hostaddr,
  port
})
const unix = (directory: string, port = 5432): ConnectionOptions.HostEntry => ({ _tag: "Unix", directory, port })

describe("libpq's documented examples", () => {
  it("keyword/value", () => {
    assert.deepStrictEqual(parse("host=localhost port=5432 dbname=mydb connect_timeout=10"), {
      host: "localhost",
      port: "5432",
      dbname: "mydb",
      connect_timeout: "10"
    })
    const o = resolve("host=localhost port=5432 dbname=mydb connect_timeout=10")
    assert.deepStrictEqual(o.hosts, [tcp("localhost")])
    assert.strictEqual(o.connectTimeout, 10)
  })

  it("URIs", () => {
    const cases: ReadonlyArray<readonly [string, Record<string, string>]> = [
      ["postgresql://", {}],
      ["postgresql://localhost", { host: "localhost" }],
      ["postgresql://localhost:5433", { host: "localhost", port: "5433" }],
      ["postgresql://localhost/mydb", { host: "localhost", dbname: "mydb" }],
      ["postgresql://user@localhost", { user: "user", host: "localhost" }],
      ["postgresql://user:secret@localhost", { user: "user", password: "secret", host: "localhost" }],
      ["postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp", {
        user: "other",
        host: "localhost",
        dbname: "otherdb",
        connect_timeout: "10",
        application_name: "myapp"
      }],
      ["postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp", {
        host: "host1,host2",
        port: "123,456",
        dbname: "somedb",
        target_session_attrs: "any",
        application_name: "myapp"
      }],
      ["postgresql:///dbname?host=/var/lib/postgresql", { dbname: "dbname", host: "/var/lib/postgresql" }],
      ["postgresql://%2Fvar%2Flib%2Fpostgresql/dbname", { host: "/var/lib/postgresql", dbname: "dbname" }],
      ["postgresql://[2001:db8::1234]/database", { host: "2001:db8::1234", dbname: "database" }],
      ["postgresql://[::1]:5433", { host: "::1", port: "5433" }],
      ["postgres://localhost", { host: "localhost" }]
    ]
    for (const [uri, expected] of cases) assert.deepStrictEqual(parse(uri), expected, uri)
  })

  it("resolved URIs", () => {
    assert.deepStrictEqual(resolve("postgresql://").hosts, [unix("/tmp")])
    assert.deepStrictEqual(resolve("postgresql://localhost:5433").hosts, [tcp("localhost", 5433)])
    assert.deepStrictEqual(resolve("postgresql://host1:123,host2:456/somedb").hosts, [
      tcp("host1", 123),
      tcp("host2", 456)
    ])
    assert.deepStrictEqual(resolve("postgresql:///dbname?host=/var/lib/postgresql").hosts, [
      unix("/var/lib/postgresql")
    ])
    assert.deepStrictEqual(resolve("postgresql://%2Fvar%2Flib%2Fpostgresql/dbname").hosts, [
      unix("/var/lib/postgresql")
    ])
    assert.deepStrictEqual(resolve("postgresql://[2001:db8::1234]/database").hosts, [tcp("2001:db8::1234")])
    assert.deepStrictEqual(resolve("postgresql://[::1]:5433").hosts, [tcp("::1", 5433)])
    // a host without a port in a list takes the default
    assert.deepStrictEqual(parse("postgresql://a:1,b,c:3"), { host: "a,b,c", port: "1,,3" })
    assert.deepStrictEqual(resolve("postgresql://a:1,b,c:3").hosts, [tcp("a", 1), tcp("b"), tcp("c", 3)])
  })
})

describe("keyword/value syntax", () => {
  it("whitespace, quoting and escapes", () => {
    assert.deepStrictEqual(parse("  host =  localhost\tport= 5433\n"), { host: "localhost", port: "5433" })
    assert.deepStrictEqual(parse("password='it\\'s a \\\\ secret' application_name = 'my app'"), {
      password: "it's a \\ secret",
      application_name: "my app"
    })
    assert.deepStrictEqual(parse("application_name=a\\ b\\'c"), { application_name: "a b'c" })
    assert.deepStrictEqual(parse("application_name=''"), { application_name: "" })
    assert.deepStrictEqual(parse("application_name="), { application_name: "" })
    assert.deepStrictEqual(parse("host='x'port=5"), { host: "x", port: "5" })
    assert.deepStrictEqual(parse("application_name=it's"), { application_name: "it's" })
    assert.deepStrictEqual(parse("application_name=x\\"), { application_name: "x" })
    assert.deepStrictEqual(parse("host=a host=b"), { host: "b" })
    assert.deepStrictEqual(parse(""), {})
    assert.deepStrictEqual(parse("   "), {})
    // a percent sign is literal outside URIs
    assert.deepStrictEqual(parse("host=%2Ftmp"), { host: "%2Ftmp" })
  })

  it("requiressl is libpq's alias for sslmode", () => {
    assert.deepStrictEqual(parse("requiressl=1"), { sslmode: "require" })
    assert.deepStrictEqual(parse("requiressl=0"), { sslmode: "prefer" })
    assert.deepStrictEqual(parse("sslmode=disable requiressl=1"), { sslmode: "require" })
    assert.deepStrictEqual(parse("requiressl=1 sslmode=disable"), { sslmode: "disable" })
  })

  it("errors", () => {
    assert.strictEqual(parseError("host"), "missing \"=\" after \"host\" in connection info string")
    assert.strictEqual(parseError("host localhost"), "missing \"=\" after \"host\" in connection info string")
    assert.strictEqual(parseError("host=a port"), "missing \"=\" after \"port\" in connection info string")
    assert.strictEqual(parseError("host='abc"), "unterminated quoted string in connection info string")
    assert.strictEqual(parseError("host='abc\\'"), "unterminated quoted string in connection info string")
    assert.strictEqual(parseError("foo=bar"), "invalid connection option \"foo\"")
    assert.strictEqual(parseError("=x"), "invalid connection option \"\"")
    assert.strictEqual(parseError("Host=x"), "invalid connection option \"Host\"")
    assert.strictEqual(parseError("host=a\0 sslmode=disable"), "connection string must not contain a NUL character")
  })

  it("every libpq 18 keyword is accepted", () => {
    assert.strictEqual(ConnectionOptions.keywords.length, 50)
    for (const keyword of ConnectionOptions.keywords) {
      assert.deepStrictEqual(parse(`${keyword}=v`), { [keyword]: "v" }, keyword)
    }
  })
})

describe("URI syntax", () => {
  it("credentials, percent-decoding, parameters", () => {
    assert.deepStrictEqual(parse("postgresql://us%40er:p%3Ass@h"), { user: "us@er", password: "p:ss", host: "h" })
    assert.deepStrictEqual(parse("postgresql://:pw@h"), { password: "pw", host: "h" })
    assert.deepStrictEqual(parse("postgresql://a:b:c@h"), { user: "a", password: "b:c", host: "h" })
    assert.deepStrictEqual(parse("postgresql://h/caf%C3%A9"), { host: "h", dbname: "café" })
    assert.deepStrictEqual(parse("postgresql://h/"), { host: "h" })
    assert.deepStrictEqual(parse("postgresql://h?application%5Fname=x%20y"), { host: "h", application_name: "x y" })
    assert.deepStrictEqual(parse("postgresql://h?"), { host: "h" })
    assert.deepStrictEqual(parse("postgresql://h?a%70plication_name="), { host: "h", application_name: "" })
    assert.deepStrictEqual(parse("postgresql://h?ssl=true"), { host: "h", sslmode: "require" })
    assert.deepStrictEqual(parse("postgresql://h?requiressl=1"), { host: "h", sslmode: "require" })
    assert.deepStrictEqual(parse("postgresql://h?port=1&port=2"), { host: "h", port: "2" })
    assert.deepStrictEqual(parse("postgresql://[::1],[fe80::1%25eth0]:7"), { host: "::1,fe80::1%eth0", port: ",7" })
    assert.deepStrictEqual(parse("postgresql://h:5432?host=other"), { host: "other", port: "5432" })
  })

  it("errors", () => {
    assert.strictEqual(
      parseError("postgresql://[::1"),
      "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"postgresql://[::1\""
    )
    assert.strictEqual(parseError("postgresql://[]"), "IPv6 host address may not be empty in URI: \"postgresql://[]\"")
    assert.strictEqual(
      parseError("postgresql://[::1]x"),
      "unexpected character \"x\" at position 19 in URI (expected \":\" or \"/\"): \"postgresql://[::1]x\""
    )
    assert.strictEqual(
      parseError("postgres://u@[::1]@"),
      "unexpected character \"@\" at position 19 in URI (expected \":\" or \"/\"): \"postgres://u@[::1]@\""
    )
    assert.strictEqual(parseError("postgresql://h?foo=bar"), "invalid URI query parameter: \"foo\"")
    assert.strictEqual(parseError("postgresql://h?ssl=false"), "invalid URI query parameter: \"ssl\"")
    assert.strictEqual(parseError("postgresql://h?=1"), "invalid URI query parameter: \"\"")
    assert.strictEqual(
      parseError("postgresql://h?sslmode"),
      "missing key/value separator \"=\" in URI query parameter: \"sslmode\""
    )
    assert.strictEqual(
      parseError("postgresql://h?host=a&&port=1"),
      "missing key/value separator \"=\" in URI query parameter: \"\""
    )
    assert.strictEqual(
      parseError("postgresql://h?host=a=b"),
      "extra key/value separator \"=\" in URI query parameter: \"host\""
    )
    assert.strictEqual(parseError("postgresql://ho%zzst"), "invalid percent-encoded token: \"ho%zzst\"")
    assert.strictEqual(parseError("postgresql://host%2"), "invalid percent-encoded token: \"host%2\"")
    assert.strictEqual(parseError("postgresql://h/db%00"), "forbidden value %00 in percent-encoded value: \"db%00\"")
    assert.strictEqual(
      parseError("postgresql://h?application_name=%00"),
      "forbidden value %00 in percent-encoded value: \"%00\""
    )
  })

  it("parse dispatches on the scheme like PQconnectdb", () => {
    assert.isTrue(ConnectionOptions.isUri("postgres://x"))
    assert.isFalse(ConnectionOptions.isUri("POSTGRESQL://x"))
    assert.strictEqual(parseError("POSTGRESQL://x"), "missing \"=\" after \"POSTGRESQL://x\" in connection info string")
    assert.deepStrictEqual(ok(ConnectionOptions.parseUri("postgresql://h")), { host: "h" })
    assert.strictEqual(
      err(ConnectionOptions.parseUri("host=h")),
      "invalid URI propagated to internal parser routine: \"host=h\""
    )
    assert.deepStrictEqual(ok(ConnectionOptions.parseConninfo("host=h")), { host: "h" })
  })
})

describe("defaults and the environment", () => {
  it("built-in defaults", () => {
    const o = resolve("")
    assert.deepStrictEqual(o.hosts, [unix("/tmp")])
    assert.strictEqual(o.sslmode, "prefer")
    assert.strictEqual(o.sslnegotiation, "postgres")
    assert.strictEqual(o.gssencmode, "prefer")
    assert.strictEqual(o.sslsni, true)
    assert.strictEqual(o.keepalives, true)
    assert.strictEqual(o.sslMinProtocolVersion, "TLSv1.2")
    assert.strictEqual(o.sslMaxProtocolVersion, undefined)
    assert.strictEqual(o.minProtocolVersion, "3.0")
    assert.strictEqual(o.maxProtocolVersion, "3.0")
    assert.strictEqual(o.connectTimeout, undefined)
    assert.strictEqual(o.krbsrvname, "postgres")
    assert.strictEqual(o.sslrootcert, undefined)
    assert.strictEqual(o.sslpassword, undefined)
  })

  it("string > environment > default", () => {
    const env = { PGHOST: "envhost", PGPORT: "6543", PGSSLMODE: "require", PGCONNECT_TIMEOUT: "7" }
    const o = resolve("host=strhost sslmode=disable", env)
    assert.deepStrictEqual(o.hosts, [tcp("strhost", 6543)])
    assert.strictEqual(o.sslmode, "disable")
    assert.strictEqual(o.connectTimeout, 7)
    assert.deepStrictEqual(resolve("postgresql://", env).hosts, [tcp("envhost", 6543)])
    assert.strictEqual(resolve("postgresql://", env).sslmode, "require")
    // an empty URI dbname/host is not stored, so the environment still applies
    assert.deepStrictEqual(resolve("postgresql:///", env).hosts, [tcp("envhost", 6543)])
  })

  it("fromEnv maps PG* variables", () => {
    assert.deepStrictEqual(
      ConnectionOptions.fromEnv({
        PGHOST: "h",
        PGHOSTADDR: "10.0.0.1",
        PGPORT: "1",
        PGSSLNEGOTIATION: "direct",
        PGGSSENCMODE: "disable",
        PGMAXPROTOCOLVERSION: "latest",
        PGAPPNAME: "",
        PGUSER: undefined,
        UNRELATED: "x"
      }),
      {
        host: "h",
        hostaddr: "10.0.0.1",
        port: "1",
        sslnegotiation: "direct",
        gssencmode: "disable",
        max_protocol_version: "latest",
        application_name: ""
      }
    )
    assert.strictEqual(ConnectionOptions.environmentVariables["ssl_min_protocol_version"], "PGSSLMINPROTOCOLVERSION")
    assert.strictEqual(ConnectionOptions.environmentVariables["target_session_attrs"], "PGTARGETSESSIONATTRS")
  })

  it("PGREQUIRESSL", () => {
    assert.strictEqual(resolve("", { PGREQUIRESSL: "1" }).sslmode, "require")
    assert.strictEqual(resolve("", { PGREQUIRESSL: "0" }).sslmode, "prefer")
    assert.strictEqual(resolve("", { PGREQUIRESSL: "1", PGSSLMODE: "allow" }).sslmode, "allow")
    assert.strictEqual(resolve("sslmode=disable", { PGREQUIRESSL: "1" }).sslmode, "disable")
  })

  it("an empty variable counts as set", () => {
    assert.strictEqual(resolveError("", { PGSSLMODE: "" }), "invalid sslmode value: \"\"")
    assert.deepStrictEqual(resolve("", { PGHOST: "" }).hosts, [unix("/tmp")])
  })

  it("withDefaults fills every keyword that has a default", () => {
    const d = ConnectionOptions.withDefaults({ host: "h" }, { PGAPPNAME: "app" })
    assert.deepStrictEqual(d, {
      host: "h",
      channel_binding: "prefer",
      port: "5432",
      options: "",
      application_name: "app",
      sslmode: "prefer",
      sslnegotiation: "postgres",
      sslcompression: "0",
      sslsni: "1",
      ssl_min_protocol_version: "TLSv1.2",
      gssencmode: "prefer",
      krbsrvname: "postgres",
      gssdelegation: "0",
      target_session_attrs: "any",
      load_balance_hosts: "disable"
    })
  })

  it("sslrootcert=system strengthens the default sslmode only", () => {
    assert.strictEqual(resolve("sslrootcert=system").sslmode, "verify-full")
    assert.strictEqual(resolve("", { PGSSLROOTCERT: "system" }).sslmode, "verify-full")
    assert.strictEqual(
      resolveError("sslrootcert=system sslmode=require"),
      "weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")"
    )
    assert.strictEqual(
      resolveError("sslrootcert=system", { PGSSLMODE: "verify-ca" }),
      "weak sslmode \"verify-ca\" may not be used with sslrootcert=system (use \"verify-full\")"
    )
    assert.strictEqual(
      resolveError("sslrootcert=system", { PGREQUIRESSL: "1" }),
      "weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")"
    )
    assert.strictEqual(ok(ConnectionOptions.resolve({ sslrootcert: "system" })).sslmode, "verify-full")
  })

  it("service files are not supported", () => {
    assert.include(resolveError("service=mydb"), "service files are not supported")
    assert.include(resolveError("", { PGSERVICE: "mydb" }), "service \"mydb\"")
    assert.deepStrictEqual(parse("service=mydb"), { service: "mydb" })
  })
})

describe("resolve: hosts and ports", () => {
  it("host kinds", () => {
    assert.deepStrictEqual(resolve("host=/run/pg,db,@abstract port=1").hosts, [
      unix("/run/pg", 1),
      tcp("db", 1),
      unix("@abstract", 1)
    ])
    assert.deepStrictEqual(resolve("hostaddr=10.0.0.1").hosts, [tcp(undefined, 5432, "10.0.0.1")])
    assert.deepStrictEqual(resolve("host=db.example hostaddr=10.0.0.1 port=6432").hosts, [
      tcp("db.example", 6432, "10.0.0.1")
    ])
    assert.deepStrictEqual(resolve("host=a,/tmp hostaddr=10.0.0.1,").hosts, [tcp("a", 5432, "10.0.0.1"), unix("/tmp")])
    assert.deepStrictEqual(resolve("host=a,,b").hosts, [tcp("a"), unix("/tmp"), tcp("b")])
    assert.deepStrictEqual(resolve("host=a,b port=7,").hosts, [tcp("a", 7), tcp("b")])
    assert.deepStrictEqual(resolve("host=a port=' 42 '").hosts, [tcp("a", 42)])
  })

  it("list mismatches", () => {
    assert.strictEqual(
      resolveError("host=a,b hostaddr=10.0.0.1,10.0.0.2,10.0.0.3"),
      "could not match 2 host names to 3 hostaddr values"
    )
    assert.strictEqual(
      resolveError("host=a,b,c hostaddr=10.0.0.1"),
      "could not match 3 host names to 1 hostaddr values"
    )
    assert.strictEqual(resolveError("host=a,b,c port=1,2"), "could not match 2 port numbers to 3 hosts")
    assert.strictEqual(resolveError("port=1,2"), "could not match 2 port numbers to 1 hosts")
  })

  it("port values", () => {
    assert.strictEqual(resolveError("port=0"), "invalid port number: \"0\"")
    assert.strictEqual(resolveError("port=65536"), "invalid port number: \"65536\"")
    assert.strictEqual(resolveError("host=a,b port=1,-1"), "invalid port number: \"-1\"")
    assert.strictEqual(resolveError("port=abc"), "invalid integer value \"abc\" for connection option \"port\"")
    assert.strictEqual(resolveError("port=5432x"), "invalid integer value \"5432x\" for connection option \"port\"")
    assert.strictEqual(
      resolveError("port=99999999999"),
      "invalid integer value \"99999999999\" for connection option \"port\""
    )
    assert.deepStrictEqual(resolve("port=65535").hosts, [unix("/tmp", 65535)])
  })
})

describe("resolve: validation messages", () => {
  it("sslmode / sslnegotiation / gssencmode", () => {
    assert.strictEqual(resolveError("sslmode=bogus"), "invalid sslmode value: \"bogus\"")
    assert.strictEqual(resolveError("sslnegotiation=tls"), "invalid sslnegotiation value: \"tls\"")
    for (const weak of ["disable", "allow", "prefer"]) {
      assert.strictEqual(
        resolveError(`sslmode=${weak} sslnegotiation=direct`),
        `weak sslmode "${weak}" may not be used with sslnegotiation=direct (use "require", "verify-ca", or "verify-full")`
      )
    }
    assert.strictEqual(
      resolveError("sslnegotiation=direct"),
      "weak sslmode \"prefer\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")"
    )
    for (const strong of ["require", "verify-ca", "verify-full"] as const) {
      const o = resolve(`sslmode=${strong} sslnegotiation=direct`)
      assert.strictEqual(o.sslmode, strong)
      assert.strictEqual(o.sslnegotiation, "direct")
    }
    assert.strictEqual(resolveError("gssencmode=always"), "invalid gssencmode value: \"always\"")
    // require is kept: whether GSS is available is decided by the transport
    assert.strictEqual(resolve("gssencmode=require").gssencmode, "require")
    assert.strictEqual(resolve("gssencmode=disable").gssencmode, "disable")
  })

  it("TLS protocol versions", () => {
    assert.strictEqual(
      resolveError("ssl_min_protocol_version=TLSv9"),
      "invalid ssl_min_protocol_version value: \"TLSv9\""
    )
    assert.strictEqual(
      resolveError("ssl_max_protocol_version=SSLv3"),
      "invalid ssl_max_protocol_version value: \"SSLv3\""
    )
    assert.strictEqual(
      resolveError("ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2"),
      "invalid SSL protocol version range"
    )
    assert.strictEqual(
      resolveError("ssl_min_protocol_version=TLSv1.1 ssl_max_protocol_version=TLSv1"),
      "invalid SSL protocol version range"
    )
    const o = resolve("ssl_min_protocol_version=tlsv1.3 ssl_max_protocol_version=TLSV1.3")
    assert.strictEqual(o.sslMinProtocolVersion, "TLSv1.3")
    assert.strictEqual(o.sslMaxProtocolVersion, "TLSv1.3")
    assert.strictEqual(resolve("ssl_min_protocol_version=''").sslMinProtocolVersion, undefined)
    // against the built-in minimum TLSv1.2, as in libpq
    assert.strictEqual(resolveError("ssl_max_protocol_version=TLSv1.1"), "invalid SSL protocol version range")
    assert.strictEqual(
      resolve("ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.1").sslMaxProtocolVersion,
      "TLSv1.1"
    )
  })

  it("wire protocol versions", () => {
    assert.strictEqual(resolveError("min_protocol_version=3.1"), "invalid min_protocol_version value: \"3.1\"")
    assert.strictEqual(resolveError("max_protocol_version=4"), "invalid max_protocol_version value: \"4\"")
    assert.strictEqual(resolveError("min_protocol_version=''"), "invalid min_protocol_version value: \"\"")
    assert.strictEqual(
      resolveError("min_protocol_version=3.2 max_protocol_version=3.0"),
      "\"min_protocol_version\" is greater than \"max_protocol_version\""
    )
    const latest = resolve("max_protocol_version=latest")
    assert.strictEqual(latest.minProtocolVersion, "3.0")
    assert.strictEqual(latest.maxProtocolVersion, "3.2")
    const min32 = resolve("min_protocol_version=3.2")
    assert.strictEqual(min32.minProtocolVersion, "3.2")
    assert.strictEqual(min32.maxProtocolVersion, "3.2")
    assert.strictEqual(resolve("min_protocol_version=latest").maxProtocolVersion, "3.2")
    assert.strictEqual(resolve("max_protocol_version=3.0").maxProtocolVersion, "3.0")
    assert.strictEqual(resolve("", { PGMAXPROTOCOLVERSION: "3.2" }).maxProtocolVersion, "3.2")
  })

  it("integer options", () => {
    assert.strictEqual(
      resolveError("connect_timeout=ten"),
      "invalid integer value \"ten\" for connection option \"connect_timeout\""
    )
    assert.strictEqual(
      resolveError("connect_timeout=''"),
      "invalid integer value \"\" for connection option \"connect_timeout\""
    )
    assert.strictEqual(resolve("connect_timeout=0").connectTimeout, undefined)
    assert.strictEqual(resolve("connect_timeout=-5").connectTimeout, undefined)
    assert.strictEqual(resolve("connect_timeout=1").connectTimeout, 2)
    assert.strictEqual(resolve("connect_timeout=' +7 '").connectTimeout, 7)
    assert.strictEqual(resolve("keepalives=0").keepalives, false)
    assert.strictEqual(resolve("keepalives=2").keepalives, true)
    assert.strictEqual(
      resolveError("keepalives=yes"),
      "invalid integer value \"yes\" for connection option \"keepalives\""
    )
    const k = resolve("keepalives_idle=-3 keepalives_interval=5 keepalives_count=4 tcp_user_timeout=1000")
    assert.strictEqual(k.keepalivesIdle, 0)
    assert.strictEqual(k.keepalivesInterval, 5)
    assert.strictEqual(k.keepalivesCount, 4)
    assert.strictEqual(k.tcpUserTimeout, 1000)
    for (const option of ["keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"]) {
      assert.strictEqual(
        resolveError(`${option}=1.5`),
        `invalid integer value "1.5" for connection option "${option}"`
      )
    }
    assert.strictEqual(
      resolveError("connect_timeout=0x10"),
      "invalid integer value \"0x10\" for connection option \"connect_timeout\""
    )
  })

  it("authentication-only options are validated and otherwise ignored", () => {
    assert.strictEqual(resolveError("channel_binding=maybe"), "invalid channel_binding value: \"maybe\"")
    assert.strictEqual(resolveError("sslcertmode=always"), "invalid sslcertmode value: \"always\"")
    assert.strictEqual(resolveError("target_session_attrs=master"), "invalid target_session_attrs value: \"master\"")
    assert.strictEqual(
      resolveError("load_balance_hosts=roundrobin"),
      "invalid load_balance_hosts value: \"roundrobin\""
    )
    assert.strictEqual(resolveError("require_auth=kerberos"), "invalid require_auth value: \"kerberos\"")
    assert.strictEqual(resolveError("require_auth=!kerberos"), "invalid require_auth value: \"kerberos\"")
    assert.strictEqual(resolveError("require_auth=password,"), "invalid require_auth value: \"\"")
    assert.strictEqual(
      resolveError("require_auth=password,!md5"),
      "negative require_auth method \"!md5\" cannot be mixed with non-negative methods"
    )
    assert.strictEqual(
      resolveError("require_auth=!password,md5"),
      "require_auth method \"md5\" cannot be mixed with negative methods"
    )
    assert.strictEqual(
      resolveError("require_auth=md5,md5"),
      "require_auth method \"md5\" is specified more than once"
    )
    assert.strictEqual(
      resolveError("require_auth=!scram-sha-256,!scram-sha-256"),
      "require_auth method \"!scram-sha-256\" is specified more than once"
    )
    assert.strictEqual(
      resolveError("require_auth=none,none"),
      "require_auth method \"none\" is specified more than once"
    )
    assert.strictEqual(resolveError("scram_client_key=!!!"), "invalid SCRAM client key")
    assert.strictEqual(resolveError("scram_server_key=AQIDBA=="), "invalid SCRAM server key length: 4")
    for (
      const s of [
        "require_auth=scram-sha-256,password",
        "require_auth=!md5,!password",
        "require_auth=none,scram-sha-256",
        "require_auth=gss,sspi",
        "require_auth=!none",
        "require_auth=''",
        "channel_binding=require sslcertmode=require target_session_attrs=prefer-standby load_balance_hosts=random",
        `scram_client_key=${Buffer.alloc(32, 7).toString("base64")}`,
        "user=u password=p dbname=d options=-cfoo=bar application_name=a replication=database oauth_issuer=x"
      ]
    ) {
      assert.isTrue(Result.isSuccess(ConnectionOptions.fromStringResult(s)), s)
    }
  })

  it("TLS file options and sslsni", () => {
    const o = resolve(
      "sslcert=/c sslkey=/k sslrootcert=/r sslcrl=/l sslcrldir=/d sslpassword=hunter2 sslsni=0 requirepeer=postgres krbsrvname=pg"
    )
    assert.strictEqual(o.sslcert, "/c")
    assert.strictEqual(o.sslkey, "/k")
    assert.strictEqual(o.sslrootcert, "/r")
    assert.strictEqual(o.sslcrl, "/l")
    assert.strictEqual(o.sslcrldir, "/d")
    assert.strictEqual(o.sslsni, false)
    assert.strictEqual(o.requirepeer, "postgres")
    assert.strictEqual(o.krbsrvname, "pg")
    assert.isDefined(o.sslpassword)
    assert.strictEqual(Redacted.value(o.sslpassword!), "hunter2")
    assert.notInclude(util.inspect(o, { depth: 10 }), "hunter2")
    assert.notInclude(JSON.stringify(o), "hunter2")
    const empty = resolve("sslcert='' sslrootcert='' requirepeer=''")
    assert.strictEqual(empty.sslcert, undefined)
    assert.strictEqual(empty.sslrootcert, undefined)
    assert.strictEqual(empty.requirepeer, undefined)
  })

  it("resolve and fromParams on records", () => {
    assert.strictEqual(err(ConnectionOptions.resolve({ bogus: "1" })), "invalid connection option \"bogus\"")
    assert.strictEqual(ok(ConnectionOptions.resolve({ requiressl: "1" })).sslmode, "require")
    assert.strictEqual(ok(ConnectionOptions.resolve({ host: undefined, port: "7" })).hosts[0]!.port, 7)
    // PQconnectdbParams: empty values mean "not set", so the environment applies
    const p = ok(ConnectionOptions.fromParams({ host: "", port: "", sslmode: "require" }, { PGHOST: "envhost" }))
    assert.deepStrictEqual(p.hosts, [tcp("envhost")])
    assert.strictEqual(p.sslmode, "require")
    assert.strictEqual(err(ConnectionOptions.fromParams({ hots: "x" })), "invalid connection option \"hots\"")
  })
})

describe("Effect API", () => {
  it.effect("fromString succeeds and fails with InvalidOption", () =>
    Effect.gen(function*() {
      const o = yield* ConnectionOptions.fromString("postgresql://db1:5433,db2/app?sslmode=require", {
        PGCONNECT_TIMEOUT: "5"
      })
      assert.deepStrictEqual(o.hosts, [tcp("db1", 5433), tcp("db2")])
      assert.strictEqual(o.connectTimeout, 5)
      assert.strictEqual(o.sslmode, "require")
      const e = yield* Effect.flip(ConnectionOptions.fromString("sslmode=nope"))
      assert.strictEqual(e._tag, "InvalidOption")
      assert.strictEqual(e.message, "invalid sslmode value: \"nope\"")
    }))
})

describe("fuzz: parse / fromString end in a value or an InvalidOption", () => {
  const check = (s: string): void => {
    const results: ReadonlyArray<Result.Result<unknown, CancelError.InvalidOption>> = [
      ConnectionOptions.parse(s),
      ConnectionOptions.fromStringResult(s)
    ]
    for (const r of results) {
      if (Result.isFailure(r)) {
        assert.instanceOf(r.failure, CancelError.InvalidOption)
        assert.isString(r.failure.message)
      }
    }
  }
  it.prop("any string", [anyString], ([s]) => check(s), { arbitrary: { runs: 300 } })
  it.prop("conninfo-like strings", [conninfoish], ([s]) => check(s), { arbitrary: { runs: 1000 } })
  it.prop("URI-like strings", [uriish], ([s]) => check(s), { arbitrary: { runs: 1000 } })
  it.prop("any string after a scheme", [anyString], ([s]) => check(`postgresql://${s}`), { arbitrary: { runs: 300 } })
  it.prop("parsed keywords are always valid", [conninfoish], ([s]) => {
    const r = ConnectionOptions.parse(s)
    if (Result.isSuccess(r)) {
      for (const key of Object.keys(r.success)) assert.include(ConnectionOptions.keywords, key)
    }
  }, { arbitrary: { runs: 500 } })
})
