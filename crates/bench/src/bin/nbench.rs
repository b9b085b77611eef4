//! `nbench`: the load generator behind `scripts/bench`.
//!
//! Every run is bounded by an operation count and by wall time, and prints exactly one JSON line:
//! `{"name":..,"threads":..,"ops":..,"secs":..,"ops_per_s":..,"p50_us":..,"p99_us":..,"errors":..}`
//! (plus `first_error` when something failed). `ops` counts successful operations only.
//!
//! ```text
//! nbench kv-read   PATH           [opts]   open + read to EOF + close
//! nbench kv-write  PATH           [opts]   open(O_WRONLY|O_TRUNC) + write 64 bytes + close
//! nbench bao-read  URL TOKEN PATH [opts]   GET  /v1/PATH   (KV v2, keep-alive HTTP/1.1)
//! nbench bao-write URL TOKEN PATH [opts]   POST /v1/PATH   {"data":{"v":"<64 bytes>"}}
//! nbench exchange  PATH [INPUT]   [opts]   open(O_RDWR) + write INPUT (default: 64 bytes) +
//!                                          pread at 0 + close (transit encrypt/decrypt)
//! nbench bao-post  URL TOKEN PATH BODY [opts]  POST /v1/PATH with the JSON BODY (transit)
//! nbench fill      DIR N          [opts]   create DIR/k0 .. DIR/k{N-1}, 64 bytes each
//! nbench exec      [opts] -- CMD ARGS..    run CMD repeatedly (stdout to /dev/null), time each
//! nbench pg-create-role URL       [opts]   CREATE ROLE "nbench-raw-…" LOGIN PASSWORD '<32 chars>'
//!                                          VALID UNTIL '<now + 1h>' (one simple query; one
//!                                          connection per thread): the raw floor under
//!                                          dynamic PostgreSQL credentials
//! opts: --threads N (1)  --seconds S (5)  --max-ops M (10000000; fill: N; exec: 200)
//!       --name NAME (the subcommand)  --create (kv-write: add O_CREAT)
//! ```
//!
//! For bao-*, PATH is the API path under /v1/, e.g. `secret/data/x`; one TCP connection per
//! thread, kept open, reopened only after an error. A `{i}` in PATH is replaced by the operation's
//! index (`bao-write … secret/data/fill/k{i} --max-ops 100000` stores 100,000 secrets).

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const PAYLOAD: &[u8; 64] = b"nbench-v-0123456789abcdef0123456789abcdef0123456789abcdef0123456";

#[derive(Clone)]
enum Workload {
    KvRead(PathBuf),
    KvWrite {
        path: PathBuf,
        create: bool,
    },
    BaoRead(Bao),
    BaoWrite(Bao),
    /// POST a fixed JSON body (OpenBao transit encrypt/decrypt).
    BaoPost(Bao, String),
    /// Read-after-write in one open (nomadfs transit exchange files).
    Exchange {
        path: PathBuf,
        input: Vec<u8>,
    },
    Fill(PathBuf),
    Exec(Vec<String>),
    PgCreateRole(String),
}

#[derive(Clone)]
struct Bao {
    addr: String,
    token: String,
    path: String,
}

struct Opts {
    threads: usize,
    seconds: f64,
    max_ops: u64,
    name: String,
}

fn usage() -> String {
    "usage: nbench {kv-read PATH | kv-write PATH | bao-read URL TOKEN PATH | \
     bao-write URL TOKEN PATH | bao-post URL TOKEN PATH BODY | exchange PATH [INPUT] | \
     fill DIR N | exec [opts] -- CMD ARGS.. | pg-create-role URL} \
     [--threads N] [--seconds S] [--max-ops M] [--name NAME] [--create]"
        .to_string()
}

fn main() {
    match parse(std::env::args().skip(1).collect()) {
        Ok((workload, opts)) => {
            let summary = run(&workload, &opts);
            println!("{summary}");
        }
        Err(e) => {
            eprintln!("nbench: {e}\n{}", usage());
            std::process::exit(2);
        }
    }
}

fn parse(args: Vec<String>) -> BoxResult<(Workload, Opts)> {
    let mut positional = Vec::new();
    let mut threads = 1usize;
    let mut seconds: Option<f64> = None;
    let mut max_ops: Option<u64> = None;
    let mut name: Option<String> = None;
    let mut create = false;
    let mut command: Vec<String> = Vec::new();

    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--threads" => threads = value("--threads")?.parse()?,
            "--seconds" => seconds = Some(value("--seconds")?.parse()?),
            "--max-ops" => max_ops = Some(value("--max-ops")?.parse()?),
            "--name" => name = Some(value("--name")?),
            "--create" => create = true,
            "--" => {
                command = it.by_ref().collect();
                break;
            }
            "-h" | "--help" => return Err("help".into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}").into()),
            _ => positional.push(arg),
        }
    }
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }

    let mut pos = positional.into_iter();
    let sub = pos.next().ok_or("missing subcommand")?;
    let mut next = |what: &str| pos.next().ok_or_else(|| format!("{sub}: missing {what}"));
    let bao = |next: &mut dyn FnMut(&str) -> Result<String, String>| -> BoxResult<Bao> {
        let url = next("URL")?;
        let token = next("TOKEN")?;
        let path = next("PATH")?;
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        if addr.starts_with("https://") || addr.contains('/') {
            return Err(
                format!("only plain http://HOST:PORT URLs are supported, got {url}").into(),
            );
        }
        Ok(Bao {
            addr,
            token,
            path: path.trim_start_matches('/').to_string(),
        })
    };
    let (workload, default_max) = match sub.as_str() {
        "kv-read" => (Workload::KvRead(next("PATH")?.into()), 10_000_000),
        "kv-write" => (
            Workload::KvWrite {
                path: next("PATH")?.into(),
                create,
            },
            10_000_000,
        ),
        "bao-read" => (Workload::BaoRead(bao(&mut next)?), 10_000_000),
        "bao-write" => (Workload::BaoWrite(bao(&mut next)?), 10_000_000),
        "bao-post" => {
            let b = bao(&mut next)?;
            (Workload::BaoPost(b, next("BODY")?), 10_000_000)
        }
        "exchange" => {
            let path = next("PATH")?.into();
            let input = next("INPUT")
                .ok()
                .map_or_else(|| PAYLOAD.to_vec(), String::into_bytes);
            (Workload::Exchange { path, input }, 10_000_000)
        }
        "pg-create-role" => (Workload::PgCreateRole(next("URL")?), 10_000_000),
        "fill" => {
            let dir = next("DIR")?;
            let n: u64 = next("N")?.parse()?;
            // A fill is bounded by its count; give it time to finish by default.
            seconds.get_or_insert(3600.0);
            (Workload::Fill(dir.into()), n)
        }
        "exec" => {
            if command.is_empty() {
                return Err("exec: missing -- CMD".into());
            }
            (Workload::Exec(command), 200)
        }
        other => return Err(format!("unknown subcommand {other}").into()),
    };
    if let Some(extra) = pos.next() {
        return Err(format!("unexpected argument {extra}").into());
    }
    let seconds = seconds.unwrap_or(5.0);
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err("--seconds must be positive".into());
    }
    let opts = Opts {
        threads,
        seconds,
        max_ops: max_ops.unwrap_or(default_max),
        name: name.unwrap_or(sub),
    };
    Ok((workload, opts))
}

/// Per-thread state kept across operations (the HTTP connection, buffers).
struct Worker {
    workload: Workload,
    buf: Vec<u8>,
    conn: Option<BufReader<TcpStream>>,
    request: Vec<u8>,
    pg: Option<PgWorker>,
}

/// One PostgreSQL connection on its own current-thread runtime, and VALID UNTIL for its roles.
struct PgWorker {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    valid_until: String,
    tag: u64,
    rng: u64,
}

impl PgWorker {
    fn connect(url: &str) -> BoxResult<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, conn) = rt.block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))?;
        rt.spawn(async move {
            let _ = conn.await;
        });
        let row = rt.block_on(client.query_one("SELECT (now() + interval '1 hour')::text", &[]))?;
        let valid_until: String = row.try_get(0)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Ok(PgWorker {
            rt,
            client,
            valid_until,
            tag: seed % 1_000_000_007,
            rng: seed,
        })
    }

    /// 32 alphanumerics (xorshift; the cost PostgreSQL pays for a password is the same).
    fn password(&mut self) -> String {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..32)
            .map(|_| {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                char::from(ABC[(self.rng % ABC.len() as u64) as usize])
            })
            .collect()
    }

    fn create_role(&mut self, index: u64) -> BoxResult<()> {
        let password = self.password();
        let sql = format!(
            "CREATE ROLE \"nbench-raw-{}-{index}\" LOGIN PASSWORD '{password}' VALID UNTIL '{}'",
            self.tag, self.valid_until
        );
        self.rt.block_on(self.client.batch_execute(&sql))?;
        Ok(())
    }
}

impl Worker {
    fn new(workload: Workload) -> Self {
        let request = Self::request(&workload, 0);
        Worker {
            workload,
            buf: vec![0u8; 64 * 1024],
            conn: None,
            request,
            pg: None,
        }
    }

    fn request(workload: &Workload, index: u64) -> Vec<u8> {
        match workload {
            Workload::BaoRead(b) => format!(
                "GET /v1/{} HTTP/1.1\r\nHost: {}\r\nX-Vault-Token: {}\r\n\r\n",
                b.path.replace("{i}", &index.to_string()),
                b.addr,
                b.token
            )
            .into_bytes(),
            Workload::BaoWrite(_) | Workload::BaoPost(..) => {
                let (b, body) = match workload {
                    Workload::BaoPost(b, body) => (b, body.clone()),
                    Workload::BaoWrite(b) => (
                        b,
                        format!(
                            "{{\"data\":{{\"v\":\"{}\"}}}}",
                            String::from_utf8_lossy(PAYLOAD)
                        ),
                    ),
                    _ => return Vec::new(),
                };
                format!(
                    "POST /v1/{} HTTP/1.1\r\nHost: {}\r\nX-Vault-Token: {}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                    b.path.replace("{i}", &index.to_string()),
                    b.addr,
                    b.token,
                    body.len(),
                    body
                )
                .into_bytes()
            }
            _ => Vec::new(),
        }
    }

    fn op(&mut self, index: u64) -> BoxResult<()> {
        match &self.workload {
            Workload::KvRead(path) => {
                let mut f = File::open(path)?;
                let mut total = 0usize;
                loop {
                    let n = f.read(&mut self.buf)?;
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                if total == 0 {
                    return Err("read 0 bytes".into());
                }
                Ok(())
            }
            Workload::KvWrite { path, create } => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .create(*create)
                    .open(path)?;
                f.write_all(PAYLOAD)?;
                // nomadfs commits at close(2) and reports commit errors there; std's drop
                // ignores them, so close explicitly.
                nix::unistd::close(f)?;
                Ok(())
            }
            Workload::Fill(dir) => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.join(format!("k{index}")))?;
                f.write_all(PAYLOAD)?;
                nix::unistd::close(f)?;
                Ok(())
            }
            Workload::Exchange { path, input } => {
                use std::os::unix::fs::FileExt;
                let mut f = OpenOptions::new().read(true).write(true).open(path)?;
                f.write_all(input)?;
                let n = f.read_at(&mut self.buf, 0)?;
                if n == 0 {
                    return Err("exchange answered 0 bytes".into());
                }
                nix::unistd::close(f)?;
                Ok(())
            }
            Workload::BaoRead(b) | Workload::BaoWrite(b) | Workload::BaoPost(b, _) => {
                if b.path.contains("{i}") {
                    self.request = Self::request(&self.workload, index);
                }
                let addr = b.addr.clone();
                let result = self.http_roundtrip(&addr);
                if result.is_err() {
                    self.conn = None;
                }
                result
            }
            Workload::PgCreateRole(url) => {
                if self.pg.is_none() {
                    self.pg = Some(PgWorker::connect(url)?);
                }
                let pg = self.pg.as_mut().ok_or("no connection")?;
                let r = pg.create_role(index);
                if r.is_err() && pg.client.is_closed() {
                    self.pg = None;
                }
                r
            }
            Workload::Exec(cmd) => {
                let status = Command::new(&cmd[0])
                    .args(&cmd[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("{} exited with {status}", cmd[0]).into())
                }
            }
        }
    }

    fn http_roundtrip(&mut self, addr: &str) -> BoxResult<()> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.conn = Some(BufReader::with_capacity(64 * 1024, stream));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        conn.get_mut().write_all(&self.request)?;

        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                return Err("connection closed in headers".into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = Some(v.parse()?);
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.eq_ignore_ascii_case("close");
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let size_hex = line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_hex, 16)?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        line.clear();
                        if conn.read_line(&mut line)? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                conn.read_exact(&mut body[start..])?;
                line.clear();
                conn.read_line(&mut line)?;
            }
        } else if let Some(n) = content_length {
            body.resize(n, 0);
            conn.read_exact(&mut body)?;
        } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
            return Err("response without length".into());
        }
        if close {
            self.conn = None;
        }
        if (200..300).contains(&status) {
            if matches!(self.workload, Workload::BaoRead(_)) && body.is_empty() {
                return Err("empty body".into());
            }
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&body);
            Err(format!("HTTP {status}: {}", text.trim()).into())
        }
    }
}

struct ThreadResult {
    lat_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

fn run(workload: &Workload, opts: &Opts) -> String {
    let deadline_dur = Duration::from_secs_f64(opts.seconds);
    let claimed = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let start = Instant::now();
    let deadline = start + deadline_dur;
    let max_ops = opts.max_ops;

    let handles: Vec<_> = (0..opts.threads)
        .map(|_| {
            let claimed = Arc::clone(&claimed);
            let mut worker = Worker::new(workload.clone());
            std::thread::spawn(move || {
                let mut res = ThreadResult {
                    lat_ns: Vec::with_capacity(1 << 16),
                    errors: 0,
                    first_error: None,
                };
                let mut consecutive_errors = 0u32;
                loop {
                    let index = claimed.fetch_add(1, Ordering::Relaxed);
                    if index >= max_ops {
                        break;
                    }
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        break;
                    }
                    match worker.op(index) {
                        Ok(()) => {
                            res.lat_ns.push(t0.elapsed().as_nanos() as u64);
                            consecutive_errors = 0;
                        }
                        Err(e) => {
                            res.errors += 1;
                            consecutive_errors += 1;
                            if res.first_error.is_none() {
                                res.first_error = Some(e.to_string());
                            }
                            if consecutive_errors >= 1000 {
                                break;
                            }
                            // Do not spin on a dead target.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                res
            })
        })
        .collect();

    let mut lat: Vec<u64> = Vec::new();
    let mut errors = 0u64;
    for h in handles {
        match h.join() {
            Ok(r) => {
                lat.extend_from_slice(&r.lat_ns);
                errors += r.errors;
                if let Some(e) = r.first_error {
                    let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                }
            }
            Err(_) => {
                errors += 1;
                let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| "worker thread panicked".to_string());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let ops = lat.len() as u64;
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let rank = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        lat[rank - 1] as f64 / 1000.0
    };
    let ops_per_s = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
    let mut out = format!(
        "{{\"name\":{},\"threads\":{},\"ops\":{},\"secs\":{:.3},\"ops_per_s\":{:.1},\
         \"p50_us\":{:.1},\"p99_us\":{:.1},\"errors\":{}",
        json_str(&opts.name),
        opts.threads,
        ops,
        secs,
        ops_per_s,
        pct(0.50),
        pct(0.99),
        errors
    );
    let slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = slot.as_ref() {
        out.push_str(&format!(",\"first_error\":{}", json_str(e)));
    }
    out.push('}');
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }

    #[test]
    fn parses_bao() {
        let (w, o) = parse(
            [
                "bao-read",
                "http://127.0.0.1:8200/",
                "root",
                "/secret/data/x",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        )
        .unwrap();
        assert_eq!(o.threads, 1);
        match w {
            Workload::BaoRead(b) => {
                assert_eq!(b.addr, "127.0.0.1:8200");
                assert_eq!(b.path, "secret/data/x");
            }
            _ => panic!("wrong workload"),
        }
    }

    #[test]
    fn parses_exchange_and_bao_post() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (w, _) = parse(args(&["exchange", "/m/transit/encrypt/k"])).unwrap();
        assert!(matches!(w, Workload::Exchange { ref input, .. } if input == PAYLOAD));
        let (w, _) = parse(args(&["exchange", "/m/transit/decrypt/k", "nomadfs:v1:x"])).unwrap();
        assert!(matches!(w, Workload::Exchange { ref input, .. } if input == b"nomadfs:v1:x"));
        let (w, _) = parse(args(&[
            "bao-post",
            "http://127.0.0.1:8200",
            "root",
            "transit/encrypt/k",
            "{\"plaintext\":\"aGk=\"}",
        ]))
        .unwrap();
        let req = String::from_utf8(Worker::request(&w, 0)).unwrap();
        assert!(
            req.starts_with("POST /v1/transit/encrypt/k HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("Content-Length: 20\r\n"), "{req}");
        assert!(req.ends_with("{\"plaintext\":\"aGk=\"}"), "{req}");
    }

    #[test]
    fn http_keep_alive_content_length_and_chunked() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut out = stream;
            let responses = [
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_string(),
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                    .to_string(),
                "HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied".to_string(),
            ];
            for resp in responses {
                // Read one request (headers only: GETs have no body).
                let mut line = String::new();
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                }
                out.write_all(resp.as_bytes()).unwrap();
            }
        });
        let mut w = Worker::new(Workload::BaoRead(Bao {
            addr,
            token: "t".into(),
            path: "secret/data/x".into(),
        }));
        w.op(0).unwrap();
        w.op(1).unwrap();
        let err = w.op(2).unwrap_err().to_string();
        assert!(err.contains("HTTP 403: denied"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn kv_read_and_write_on_a_temp_file() {
        let dir = std::env::temp_dir().join(format!("nbench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x");
        std::fs::write(&f, b"hello").unwrap();
        let opts = Opts {
            threads: 2,
            seconds: 5.0,
            max_ops: 100,
            name: "t".into(),
        };
        let out = run(&Workload::KvRead(f.clone()), &opts);
        assert!(out.contains("\"ops\":100,"), "{out}");
        let out = run(
            &Workload::KvWrite {
                path: f.clone(),
                create: false,
            },
            &opts,
        );
        assert!(out.contains("\"errors\":0"), "{out}");
        assert_eq!(std::fs::read(&f).unwrap(), PAYLOAD);
        let out = run(&Workload::Fill(dir.clone()), &opts);
        assert!(out.contains("\"ops\":100,"), "{out}");
        assert!(dir.join("k99").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
