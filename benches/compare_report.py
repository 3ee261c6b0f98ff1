"""Turns benches/compare.sh's raw runs into its Markdown report and the chart's data.

    python3 benches/compare_report.py DIR

Reads DIR/compare.tsv and DIR/machine.md; writes DIR/compare.md and DIR/compare.plot.
"""

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ORDER = [
    ("upstream", "rs-many", "upstream directly (ceiling)"),
    ("nginx", "rs-many", "nginx, plain reverse proxy"),
    ("haproxy-jwt", "rs-many", "HAProxy jwt_verify RS256, 1,000 tokens"),
    ("haproxy-jwt", "rs-one", "HAProxy jwt_verify RS256, 1 token"),
    ("pingora", "rs-many", "Pingora passthrough, defaults"),
    ("portcullis-off", "rs-many", "Portcullis, authentication off"),
    ("portcullis", "rs-many", "**Portcullis RS256, 1,000 tokens**"),
    ("portcullis", "rs-one", "Portcullis RS256, 1 token"),
    ("portcullis-es", "es-many", "**Portcullis ES256, 1,000 tokens**"),
    ("portcullis-es", "es-one", "Portcullis ES256, 1 token"),
    ("portcullis+flood", "rs-many", "Portcullis RS256 + 1,000 invalid tokens/s"),
    ("portcullis+cheapflood", "rs-many",
     "Portcullis RS256 + 1,000 token-less requests/s answered by the gateway"),
]


def main(out: Path) -> None:
    runs = defaultdict(list)
    with open(out / "compare.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            runs[(int(row["threads"]), row["contender"], row["tokens"])].append(row)

    def stat(threads, name, tokens, field, how=statistics.median):
        rows = runs.get((threads, name, tokens))
        return how(float(r[field]) for r in rows) if rows else None

    threads = sorted({k[0] for k in runs})
    lines = ["Median of the rounds (min–max); CPU is the contender's own, per request.", ""]
    lines.append((out / "machine.md").read_text().strip())
    targets = []
    for t in threads:
        up = stat(t, "upstream", "rs-many", "req_per_s")
        ngx = stat(t, "nginx", "rs-many", "req_per_s")
        lines += [
            "",
            f"**{t} worker thread{'s' if t > 1 else ''}**",
            "",
            "| contender | req/s | p50 | p99 | CPU µs/req | × upstream | × nginx |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, tokens, label in ORDER:
            rps = stat(t, name, tokens, "req_per_s")
            if rps is None:
                continue
            lo = stat(t, name, tokens, "req_per_s", min)
            hi = stat(t, name, tokens, "req_per_s", max)
            p50 = stat(t, name, tokens, "p50_us")
            p99 = stat(t, name, tokens, "p99_us")
            cpu = stat(t, name, tokens, "cpu_us_per_req")
            lines.append(
                f"| {label} | {rps:,.0f} ({lo:,.0f}–{hi:,.0f}) | {p50 / 1000:.2f} ms "
                f"| {p99 / 1000:.2f} ms | {cpu:.1f} | {rps / up:.2f} | {rps / ngx:.2f} |"
            )

        def ratio(a, b, field="req_per_s"):
            x, y = stat(t, *a, field), stat(t, *b, field)
            return x / y if x and y else float("nan")

        full = ("portcullis", "rs-many")
        targets += [
            (t, "Portcullis RS256 ÷ Pingora passthrough", ratio(full, ("pingora", "rs-many")), 1.0),
            (t, "Portcullis ES256 ÷ Pingora passthrough",
             ratio(("portcullis-es", "es-many"), ("pingora", "rs-many")), 1.0),
            (t, "Portcullis RS256 ÷ HAProxy jwt_verify", ratio(full, ("haproxy-jwt", "rs-many")), 1.5),
            (t, "Portcullis RS256 ÷ Portcullis auth off", ratio(full, ("portcullis-off", "rs-many")), 0.95),
            (t, "auth off p99 ÷ Portcullis RS256 p99",
             ratio(("portcullis-off", "rs-many"), full, "p99_us"), 1 / 1.1),
            (t, "valid traffic under the flood ÷ without",
             ratio(("portcullis+flood", "rs-many"), full), 0.95),
            # The control: what any 1,000 requests/s on idle keep-alive connections cost.
            (t, "valid traffic under the flood ÷ under as many token-less requests",
             ratio(("portcullis+flood", "rs-many"), ("portcullis+cheapflood", "rs-many")), 0.97),
        ]
    lines += ["", "| target | threads | measured | wanted | |", "|---|---:|---:|---:|---|"]
    for t, what, got, wanted in targets:
        if got != got:  # not measured at this thread count
            continue
        mark = "met" if got >= wanted else f"missed by {(wanted - got) / wanted:.1%}"
        lines.append(f"| {what} | {t} | {got:.2f} | ≥ {wanted:.2f} | {mark} |")
    (out / "compare.md").write_text("\n".join(lines) + "\n")

    # The chart: one line per contender, one column per thread count.
    with open(out / "compare.plot", "w") as f:
        f.write("contender " + " ".join(f'"{t}_thread"' for t in threads) + "\n")
        for name, tokens, label in ORDER:
            if tokens.endswith("-one") or "flood" in name:
                continue
            values = [stat(t, name, tokens, "req_per_s") or 0 for t in threads]
            label = label.replace("**", "").replace(", 1,000 tokens", "")
            f.write(f'"{label}" ' + " ".join(f"{v:.0f}" for v in values) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
