#!/usr/bin/env python3
"""Format one scripts/bench run (its JSON lines) as the markdown table. Stdlib only.

usage: bench_report.py RESULTS.jsonl MACHINE.txt > report.md

Record kinds, told apart by the prefix of "name" (WORKLOAD:TARGET):
  kv-read:T / kv-write:T     nbench loops (T = floorfs, floorfs-dio, tmpfs, nomadfs-dev,
                             nomadfs-file-POLICY, openbao (dev, KV v1), openbao-raft (deployed,
                             KV v1), openbao-raft-v2 (deployed, KV v2))
  info:audit                 {"default_policy": P, "policies": "P Q ..."}
  oneshot:LABEL              whole-process cost of one command
  rss:LABEL                  {"rss_kib": N}
  startup:LABEL              {"secs": S, "secrets": N}
  shutdown:LABEL             {"secs": S}  (SIGTERM to exit)
  transit-encrypt:T / transit-decrypt:T
                             nbench exchange (nomadfs) / bao-post (OpenBao transit) loops
  fill:T                     nbench fill loops (100k secrets)
  pg-creds:T / pg-revoke:T   scripts/bench-pg (T = nomadfs, raw, openbao); pg-info
  scale:LABEL                scripts/bench-scale (BENCH_SCALE=1): {"what", "value", "unit",
                             "target", "met"} or any of secs / rss_kib / ops_per_s
  any record may carry "status" (e.g. "missing binary") instead of numbers.
"""

import json
import sys

TARGET_LABEL = {
    "floorfs": "FUSE floor (floorfs)",
    "floorfs-dio": "FUSE floor, direct I/O",
    "tmpfs": "tmpfs",
    "nomadfs-dev": "nomadfs --dev (memory)",
    "nomadfs-file": "nomadfs file store (durable)",
    "openbao": "OpenBao dev (KV v1)",
    "openbao-raft": "OpenBao deployed: raft + file audit (KV v1)",
    "openbao-raft-v2": "OpenBao deployed: raft + file audit (KV v2)",
}
POLICIES = ["changes", "group", "always", "never"]
for _p in POLICIES:
    TARGET_LABEL[f"nomadfs-file-{_p}"] = f"nomadfs file store + audit, fsync {_p}"
TARGET_ORDER = (["nomadfs-dev"] + [f"nomadfs-file-{p}" for p in POLICIES]
                + ["floorfs", "floorfs-dio", "tmpfs", "openbao", "openbao-raft", "openbao-raft-v2"])
WORKLOADS = ("kv-read", "kv-write", "transit-encrypt", "transit-decrypt")


def load(path):
    recs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs


def fmt_num(x, digits=0):
    if x is None:
        return "—"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    if not a or not b:
        return "—"
    return f"{a / b:.2f}×"


def good(r):
    return r is not None and "status" not in r and r.get("ops", 0) > 0


def ops_of(by_name, name, t):
    r = by_name.get((name, t))
    return r["ops_per_s"] if good(r) else None


def cell(by_name, name, t, base=None, suffix=""):
    """ops/s of NAME at T threads, with its ratio against BASE's ops/s when given."""
    r = by_name.get((name, t))
    if r is None:
        return "—"
    if "status" in r:
        return r["status"]
    if not good(r):
        return "no ops"
    ops = r["ops_per_s"]
    txt = fmt_num(ops)
    if r.get("errors"):
        txt += f" ({r['errors']} errors)"
    if base is not None:
        txt += f" · **{ratio(ops, base)}**{suffix}"
    return txt


def deployed_section(recs, by_name, policies, default):
    out = []
    threads = sorted({r.get("threads") for r in recs
                      if r.get("name", "").split(":")[0] in WORKLOADS
                      and isinstance(r.get("threads"), int)})
    if not threads:
        return out, threads
    pols = [default] + [p for p in policies if p != default]
    out.append("## As deployed: nomadfs (file store + audit log) vs OpenBao (raft + file audit)\n")
    out.append(
        "ops/s, and in **bold** the ratio on the same row: each nomadfs file-store column ÷ "
        "OpenBao as deployed (integrated raft storage + file audit device; KV v1, the same "
        "operation, the same client threads), and nomadfs --dev ÷ OpenBao's dev server (in "
        "memory, no audit device; KV v1). nomadfs: one open/read-to-EOF/close (read), "
        "open(O_TRUNC)/write/close (write), open(O_RDWR)/write/pread/close (transit) per "
        "operation; OpenBao: keep-alive HTTP/1.1, one connection per thread. 64-byte values. "
        f"nomadfs's default audit fsync policy is `{default}`.\n")
    head = ["Workload", "Threads", "OpenBao deployed"]
    head += [f"nomadfs `{p}`" + (" (default)" if p == default else "") for p in pols]
    head += ["OpenBao deployed, KV v2", "OpenBao dev", "nomadfs --dev"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---|---:|" + "---:|" * (len(head) - 2))
    for wl in WORKLOADS:
        for t in threads:
            raft = ops_of(by_name, f"{wl}:openbao-raft", t)
            dev = ops_of(by_name, f"{wl}:openbao", t)
            row = [wl, str(t), cell(by_name, f"{wl}:openbao-raft", t)]
            row += [cell(by_name, f"{wl}:nomadfs-file-{p}", t, raft) for p in pols]
            row.append(cell(by_name, f"{wl}:openbao-raft-v2", t) if wl.startswith("kv-") else "")
            row.append(cell(by_name, f"{wl}:openbao", t))
            row.append(cell(by_name, f"{wl}:nomadfs-dev", t, dev, " of dev"))
            out.append("| " + " | ".join(row) + " |")
    out.append("")
    return out, threads


def targets_section(recs, by_name, threads, default):
    """Issue 15's targets, each marked met / not met from this run."""
    out = ["## Issue 15 targets, from this run\n",
           "| # | target | measured | met? |", "|---|---|---|---|"]
    dfile = f"nomadfs-file-{default}"

    def verdict(vals, need):
        if not vals or any(v is None for v in vals):
            return "not measured"
        return "met" if all(v >= need for v in vals) else "**not met**"

    def rat(a, b):
        return (a / b) if a and b else None

    def show(v):
        return f"{v:.2f}×" if v is not None else "—"

    top = max(threads) if threads else None
    if top is not None:
        w, d = ops_of(by_name, f"kv-write:{dfile}", top), ops_of(by_name, "kv-write:nomadfs-dev", top)
        r1 = rat(w, d)
        out.append(f"| 2 | durable KV write at {top} threads ≥ 50% of --dev at {top} threads | "
                   f"{fmt_num(w)} vs {fmt_num(d)} ops/s = {show(r1)} | {verdict([r1], 0.5)} |")
        r2 = rat(w, ops_of(by_name, "kv-write:openbao-raft", top))
        out.append(f"| 2 | durable KV write at {top} threads ≥ 5× OpenBao deployed | {show(r2)} | "
                   f"{verdict([r2], 5.0)} |")
    for t, need in ((1, 3.0), (top, 5.0)):
        if t is None or t not in threads:
            continue
        r = rat(ops_of(by_name, f"kv-read:{dfile}", t), ops_of(by_name, "kv-read:openbao-raft", t))
        out.append(f"| 3 | durable KV read (default `{default}`) ≥ {need:g}× OpenBao deployed at "
                   f"{t} thread{'s' if t > 1 else ''} | {show(r)} | {verdict([r], need)} |")
    for wl in ("transit-encrypt", "transit-decrypt"):
        dep = [rat(ops_of(by_name, f"{wl}:{dfile}", t), ops_of(by_name, f"{wl}:openbao-raft", t))
               for t in threads]
        dv = [rat(ops_of(by_name, f"{wl}:nomadfs-dev", t), ops_of(by_name, f"{wl}:openbao", t))
              for t in threads]
        tl = "/".join(str(t) for t in threads)
        out.append(f"| 4 | {wl} ≥ 3× OpenBao, both pairs ({tl} threads) | deployed: "
                   f"{' / '.join(show(v) for v in dep)}; dev: {' / '.join(show(v) for v in dv)} | "
                   f"{verdict(dep + dv, 3.0)} |")
    out.append("| 5 | kernel caching mode: KV read ≥ 8× OpenBao dev at 1 thread | "
               "not in this run (the opt-in mode is measured by its own branch) | not measured |")
    scale = [r for r in recs if r.get("name", "").startswith("scale:")]
    if not scale:
        out.append("| 6 | scale: 1M secrets, 100k leases | run with `BENCH_SCALE=1` | not measured |")
    for r in scale:
        if "status" in r:
            out.append(f"| 6 | {r.get('what', r['name'])} | {r['status']} | not measured |")
            continue
        if "value" in r:
            val = f"{fmt_num(r['value'], 2)} {r.get('unit', '')}".strip()
        elif "secs" in r:
            val = f"{r['secs']:.2f} s"
        elif "rss_kib" in r:
            val = f"{r['rss_kib'] / 1024:.1f} MiB"
        elif "ops_per_s" in r:
            val = f"{fmt_num(r['ops_per_s'])} ops/s"
        else:
            val = "?"
        met = r.get("met")
        mark = "met" if met is True else ("**not met**" if met is False else "—")
        tgt = f" (target {r['target']})" if r.get("target") else ""
        out.append(f"| 6 | {r.get('what', r['name'])}{tgt} | {val} | {mark} |")
    out.append("")
    return out


def main():
    results, machine = sys.argv[1], sys.argv[2]
    recs = load(results)
    by_name = {}
    for r in recs:
        key = (r.get("name", ""), r.get("threads"))
        by_name[key] = r  # last one wins
    info = next((r for r in recs if r.get("name") == "info:audit"), {})
    default = info.get("default_policy", "changes")
    policies = (info.get("policies") or default).split()

    out = []
    out.append("# nomadfs benchmarks — latest run\n")
    out.append("Generated by `scripts/bench`. Benchmarks, not tests: no number here fails CI.\n")
    with open(machine, encoding="utf-8") as f:
        out.append(f.read().rstrip() + "\n")
    lead, threads = deployed_section(recs, by_name, policies, default)
    out.extend(lead)
    if threads:
        out.extend(targets_section(recs, by_name, threads, default))

    # --- KV loops -------------------------------------------------------------------------
    out.append("## Every target: KV read / write (64-byte value, loop of open → read to EOF/write → close)\n")
    out.append(
        "Read = open + read to EOF + close; write = open(O_WRONLY|O_TRUNC) + write 64 B + close; "
        "OpenBao = KV v1 (v2 where named) GET/POST over one keep-alive HTTP/1.1 connection per "
        "thread. Ratios are ops/s against OpenBao's dev server and against OpenBao as deployed "
        "(same operation, same threads), against the bare "
        "FUSE floor (page cache, no FLUSH handler) and against the same floor serving with "
        "direct I/O as nomadfs does (every read(2) reaches the daemon, so a read to EOF costs one "
        "READ more).\n"
    )
    out.append("| Workload | Target | Threads | ops/s | p50 µs | p99 µs | errors | vs OpenBao dev "
               "| vs OpenBao deployed | vs FUSE floor | vs floor, direct I/O |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    threads_seen = sorted({r.get("threads") for r in recs if r.get("name", "").startswith("kv-")
                           and isinstance(r.get("threads"), int)}) or [1, 2]
    for wl in ("kv-read", "kv-write"):
        for t in threads_seen:
            bao = by_name.get((f"{wl}:openbao", t))
            floor = by_name.get((f"{wl}:floorfs", t))
            bao_ops = bao["ops_per_s"] if good(bao) else None
            raft_ops = ops_of(by_name, f"{wl}:openbao-raft", t)
            floor_ops = floor["ops_per_s"] if good(floor) else None
            dio = by_name.get((f"{wl}:floorfs-dio", t))
            dio_ops = dio["ops_per_s"] if good(dio) else None
            for target in TARGET_ORDER:
                r = by_name.get((f"{wl}:{target}", t))
                if r is None:
                    continue
                label = TARGET_LABEL.get(target, target)
                if "status" in r:
                    out.append(f"| {wl} | {label} | {t} | {r['status']} | | | | | | | |")
                    continue
                ops = r.get("ops_per_s")
                note = ""
                if r.get("errors"):
                    note = f" ({r.get('first_error', '')[:60]})"
                out.append(
                    f"| {wl} | {label} | {t} | {fmt_num(ops)} | {fmt_num(r.get('p50_us'), 1)} | "
                    f"{fmt_num(r.get('p99_us'), 1)} | {r.get('errors', 0)}{note} | "
                    f"{'1.00×' if target == 'openbao' else ratio(ops, bao_ops)} | "
                    f"{'1.00×' if target == 'openbao-raft' else ratio(ops, raft_ops)} | "
                    f"{'1.00×' if target == 'floorfs' else ratio(ops, floor_ops)} | "
                    f"{'1.00×' if target == 'floorfs-dio' else ratio(ops, dio_ops)} |"
                )
    out.append("")

    # --- transit loops ------------------------------------------------------------------------
    transit_threads = sorted({r.get("threads") for r in recs
                              if r.get("name", "").startswith("transit-")
                              and isinstance(r.get("threads"), int)})
    if transit_threads:
        out.append("## Transit encrypt / decrypt (64-byte plaintext)\n")
        out.append(
            "nomadfs = open(`transit/encrypt/bench`, O_RDWR) + write + pread at 0 + close per "
            "operation (decrypt: the same with a ciphertext in); OpenBao = POST "
            "/v1/transit/{encrypt,decrypt}/bench over one keep-alive HTTP/1.1 connection per "
            "thread. Ratio = ops/s against OpenBao (same operation, same threads).\n"
        )
        out.append("| Workload | Target | Threads | ops/s | p50 µs | p99 µs | errors | vs OpenBao dev "
                   "| vs OpenBao deployed |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for wl in ("transit-encrypt", "transit-decrypt"):
            for t in transit_threads:
                bao = by_name.get((f"{wl}:openbao", t))
                bao_ops = bao["ops_per_s"] if good(bao) else None
                raft_ops = ops_of(by_name, f"{wl}:openbao-raft", t)
                for target in [x for x in TARGET_ORDER if not x.startswith(("floor", "tmpfs", "openbao-raft-"))]:
                    r = by_name.get((f"{wl}:{target}", t))
                    if r is None:
                        continue
                    label = TARGET_LABEL.get(target, target)
                    if "status" in r:
                        out.append(f"| {wl} | {label} | {t} | {r['status']} | | | | | |")
                        continue
                    ops = r.get("ops_per_s")
                    note = f" ({r.get('first_error', '')[:60]})" if r.get("errors") else ""
                    out.append(
                        f"| {wl} | {label} | {t} | {fmt_num(ops)} | {fmt_num(r.get('p50_us'), 1)} | "
                        f"{fmt_num(r.get('p99_us'), 1)} | {r.get('errors', 0)}{note} | "
                        f"{'1.00×' if target == 'openbao' else ratio(ops, bao_ops)} | "
                        f"{'1.00×' if target == 'openbao-raft' else ratio(ops, raft_ops)} |"
                    )
        out.append("")

    # --- one-shot process cost ---------------------------------------------------------------
    oneshots = [r for r in recs if r.get("name", "").startswith("oneshot:")]
    if oneshots:
        out.append("## One-shot whole-process cost\n")
        out.append("Each run is a fresh process (fork + exec + the request + exit); "
                   "`bao` is OpenBao's real binary (not the pip Python shim).\n")
        out.append("| Command | runs | mean ms | p50 ms | p99 ms | vs `bao kv get` |")
        out.append("|---|---:|---:|---:|---:|---:|")
        bao = next((r for r in oneshots if r["name"] == "oneshot:bao-kv-get" and "status" not in r), None)
        bao_mean = bao.get("mean_ms") if bao else None
        for r in oneshots:
            label = r.get("cmd") or r["name"].split(":", 1)[1]
            if "status" in r:
                out.append(f"| `{label}` | {r['status']} | | | | |")
                continue
            mean = r.get("mean_ms")
            speed = f"{bao_mean / mean:.1f}× faster" if bao_mean and mean else "—"
            if r["name"] == "oneshot:bao-kv-get":
                speed = "1.0×"
            out.append(
                f"| `{label}` | {r.get('ops', 0)} | {fmt_num(mean, 2)} | "
                f"{fmt_num(r.get('p50_us', 0) / 1000, 2)} | {fmt_num(r.get('p99_us', 0) / 1000, 2)} | {speed} |"
            )
        out.append("")

    # --- memory and startup ---------------------------------------------------------------------
    mem = [r for r in recs if r.get("name", "").split(":")[0] in ("rss", "startup", "shutdown", "fill")]
    if mem:
        out.append("## Memory and startup\n")
        out.append("| Measure | Target | Value | Notes |")
        out.append("|---|---|---:|---|")
        for r in mem:
            kind, _, label = r["name"].partition(":")
            if "status" in r:
                out.append(f"| {r.get('what', kind)} | {label} | {r['status']} | {r.get('note', '')} |")
                continue
            if kind == "rss":
                val = f"{r['rss_kib'] / 1024:.1f} MiB"
            elif kind in ("startup", "shutdown"):
                val = f"{r['secs']:.2f} s"
            else:  # fill
                val = f"{fmt_num(r.get('ops_per_s'))} writes/s"
            note = r.get("note", "")
            if kind == "fill":
                note = (f"{r.get('ops', 0):,} secrets in {r.get('secs', 0):.1f} s, "
                        f"{r.get('threads')} threads, {r.get('errors', 0)} errors") + (f"; {note}" if note else "")
            out.append(f"| {r.get('what', kind)} | {label} | {val} | {note} |")
        out.append("")

    # --- PostgreSQL dynamic credentials --------------------------------------------------------
    pg = [r for r in recs if r.get("name", "").startswith(("pg-creds:", "pg-revoke:"))]
    if pg:
        info = next((r for r in recs if r.get("name") == "pg-info"), {})
        out.append("## PostgreSQL dynamic credentials\n")
        out.append(
            f"One throwaway cluster ({info.get('postgres', 'PostgreSQL')}, fsync on) for all three. "
            "Creds: nomadfs = `cat pg/creds/bench` (role + lease + JSON, durable store); raw = a "
            "client sending `CREATE ROLE … LOGIN PASSWORD … VALID UNTIL …` itself, one connection "
            "per thread; OpenBao = `GET database/creds/bench` on its dev server. Revocations: "
            f"{info.get('revoke_n', '?')} leases by one prefix revocation (`rmdir "
            "sys/leases/pg/creds/bench` vs `bao lease revoke -sync -prefix`), each side's default "
            "revocation statements.\n")
        out.append("| Measure | Target | Threads | ops/s | p50 µs | p99 µs | errors | ratio |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for kind, base, what in (("pg-creds", "raw", "vs raw CREATE ROLE"),
                                 ("pg-revoke", "openbao", "vs OpenBao")):
            for t in sorted({r.get("threads") for r in pg if r["name"].startswith(kind + ":")
                             and isinstance(r.get("threads"), int)}):
                b = by_name.get((f"{kind}:{base}", t))
                b_ops = b["ops_per_s"] if good(b) else None
                for target in ("nomadfs", "raw", "openbao"):
                    r = by_name.get((f"{kind}:{target}", t))
                    if r is None:
                        continue
                    if "status" in r:
                        out.append(f"| {kind} | {target} | {t} | {r['status']} | | | | |")
                        continue
                    ops = r.get("ops_per_s")
                    rat = "1.00×" if target == base else ratio(ops, b_ops)
                    out.append(
                        f"| {kind} | {target} | {t} | {fmt_num(ops)} | {fmt_num(r.get('p50_us'), 1)} | "
                        f"{fmt_num(r.get('p99_us'), 1)} | {r.get('errors', 0)} | {rat} {what} |")
        out.append("")

    # --- not yet measurable ------------------------------------------------------------------------
    pending = [r for r in recs if r.get("name", "").startswith("pending:")]
    if pending:
        out.append("## Not measured yet\n")
        out.append("| Measure | Status |")
        out.append("|---|---|")
        for r in pending:
            out.append(f"| {r.get('what', r['name'])} | {r.get('status', 'n/a')} |")
        out.append("")

    print("\n".join(out))


if __name__ == "__main__":
    main()
