"""A ClickHouse HTTP-interface server over the chDB engine (ClickHouse 26.x in-process).

The test suite starts it to get a real ClickHouse engine (real SQL, types, MergeTree, TTL,
materialized views, deduplication) behind the documented HTTP protocol, on a machine that can
run no ClickHouse server. It implements the pieces Tally and the official `clickhouse` crate use:

- GET/POST `/` with the query in the `query` URL parameter or in the body; for an INSERT with the
  query in the URL, the body is the data (identity or chunked transfer encoding);
- `database`, `default_format`, and any other URL parameter as a query setting;
- `/ping` and `GET /` answer `Ok.`;
- errors as `Code: N. DB::Exception: ...` with the `X-ClickHouse-Exception-Code` header;
- credentials from `X-ClickHouse-User`/`X-ClickHouse-Key`, basic auth, or `user`/`password`
  parameters, checked when CHDB_SERVER_USER is set (the password from CHDB_SERVER_PASSWORD, or
  read afresh per request from the file CHDB_SERVER_PASSWORD_FILE, so a test can rotate it).

Compression is not implemented: a request that asks for it (`compress=1`, `decompress=1`,
`enable_http_compression=1`) gets an error, so clients must switch it off for this server.
INSERT data must be in a format that carries its own schema (RowBinaryWithNamesAndTypes,
JSONEachRow, CSVWithNamesAndTypes, ...), which is what the `clickhouse` crate sends.

Usage: chdb_server.py PORT DATA_DIR   (PORT 0 picks a free port; the bound port is printed)
"""
import base64
import http.server
import os
import re
import sys
import threading
import urllib.parse
import uuid

from chdb import session

PORT = int(sys.argv[1])
DATA_DIR = sys.argv[2]
USER = os.environ.get("CHDB_SERVER_USER")
PASSWORD = os.environ.get("CHDB_SERVER_PASSWORD", "")
PASSWORD_FILE = os.environ.get("CHDB_SERVER_PASSWORD_FILE")


def password():
    if PASSWORD_FILE:
        with open(PASSWORD_FILE) as f:
            return f.read().strip()
    return PASSWORD

os.makedirs(os.path.join(DATA_DIR, "tmp"), exist_ok=True)
SESSION = session.Session(os.path.join(DATA_DIR, "db"))
LOCK = threading.Lock()

NOT_SETTINGS = {
    "query", "database", "default_format", "user", "password", "query_id", "session_id",
    "session_timeout", "session_check", "role", "wait_end_of_query", "buffer_size",
    "compress", "decompress", "enable_http_compression", "http_response_buffer_size",
}
INSERT_WITH_DATA = re.compile(r"(?is)^\s*INSERT\s+INTO\s+(.+?)\s+FORMAT\s+(\w+)\s*;?\s*$")
CODE = re.compile(r"Code:\s*(\d+)")
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# readonly=1 is emulated per query (a chDB session cannot leave readonly mode once set): only
# statements that read are allowed, as a real server allows in that mode.
READ_STATEMENT = re.compile(r"(?is)^\s*(\(\s*)*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b")


class ClickHouseError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def quote(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def status_for(code):
    return {60: 404, 81: 404, 62: 400, 516: 403, 36: 400, 27: 400, 115: 400, 164: 500}.get(code, 500)


def run(sql, data, database, settings, default_format):
    """Runs one query in the shared session; returns the output bytes."""
    with LOCK:
        SESSION.query(f"USE `{database.replace('`', '')}`")
        saved = []
        try:
            if settings.pop("readonly", "0") not in ("", "0"):
                if data is not None or not READ_STATEMENT.match(sql):
                    raise ClickHouseError(164, "Code: 164. DB::Exception: Cannot execute query in readonly mode. (READONLY)")
            for name, value in settings.items():
                if not SETTING_NAME.match(name):
                    raise ClickHouseError(115, f"Code: 115. DB::Exception: Unknown setting {name}. (UNKNOWN_SETTING)")
                old = SESSION.query(f"SELECT toString(getSetting({quote(name)}))", "TabSeparatedRaw").bytes()
                saved.append((name, old.decode().rstrip("\n")))
                SESSION.query(f"SET {name} = {quote(value)}")
            if data is not None:
                m = INSERT_WITH_DATA.match(sql)
                if not m:
                    raise ClickHouseError(62, "Code: 62. DB::Exception: this server takes INSERT data only as "
                                              "'INSERT INTO t [(cols)] FORMAT <format>' with the data in the body. (SYNTAX_ERROR)")
                path = os.path.join(DATA_DIR, "tmp", uuid.uuid4().hex)
                with open(path, "wb") as f:
                    f.write(data)
                try:
                    SESSION.query(f"INSERT INTO {m.group(1)} SELECT * FROM file({quote(path)}, {m.group(2)})")
                finally:
                    os.remove(path)
                return b""
            return SESSION.query(sql, default_format).bytes()
        finally:
            for name, old in reversed(saved):
                SESSION.query(f"SET {name} = {quote(old)}")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status, body, headers=()):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def fail(self, code, message):
        if not message.startswith("Code:"):
            message = f"Code: {code}. DB::Exception: {message}"
        self.reply(status_for(code), (message.rstrip("\n") + "\n").encode(),
                   [("Content-Type", "text/plain; charset=UTF-8"), ("X-ClickHouse-Exception-Code", str(code))])

    def authorized(self, params):
        if USER is None:
            return True
        user = self.headers.get("X-ClickHouse-User") or params.get("user")
        key = self.headers.get("X-ClickHouse-Key") or params.get("password", "")
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
        return user == USER and (key or "") == password()

    def handle_query(self, body):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/ping" or (url.path == "/" and not url.query and not body and self.command == "GET"):
            return self.reply(200, b"Ok.\n", [("Content-Type", "text/plain; charset=UTF-8")])
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if not self.authorized(params):
            return self.fail(516, "Code: 516. DB::Exception: default: Authentication failed: password is incorrect, "
                                  "or there is no user with such name. (AUTHENTICATION_FAILED)")
        for flag in ("compress", "decompress", "enable_http_compression"):
            if params.get(flag) == "1":
                return self.fail(36, f"Code: 36. DB::Exception: this test server does not implement HTTP compression "
                                     f"({flag}=1); switch compression off for it. (BAD_ARGUMENTS)")
        if "query" in params:
            sql, data = params["query"], (body if body else None)
        else:
            sql, data = body.decode("utf-8", "replace"), None
        settings = {k: v for k, v in params.items() if k not in NOT_SETTINGS and not k.startswith("param_")}
        database = params.get("database", "default")
        fmt = params.get("default_format", "TabSeparated")
        try:
            out = run(sql, data, database, settings, fmt)
        except ClickHouseError as e:
            return self.fail(e.code, str(e))
        except Exception as e:  # chDB raises its own error type with ClickHouse's message
            message = str(e)
            m = CODE.search(message)
            return self.fail(int(m.group(1)) if m else 1001, message)
        self.reply(200, out, [("Content-Type", "application/octet-stream"), ("X-ClickHouse-Format", fmt)])

    def do_GET(self):
        self.handle_query(b"")

    def do_POST(self):
        self.handle_query(self.read_body())


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
