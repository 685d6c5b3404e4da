"""Code shared by the bench/ helper scripts (summarise.py, dns_tool.py, checks_tool.py,
reads_tool.py). Standard library only, like the scripts themselves.

The scripts are run as `python3 bench/<tool>.py` from any directory, so each one puts its own
directory on sys.path before `import benchlib`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of the BENCHMARKS.md section NAME (registrations, dns, ...)."""
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def replace_section(path: Path, name: str, section: str) -> None:
    """Replace the text between section NAME's markers in PATH (markers included) with SECTION,
    which must itself start and end with those markers. Appends the section when the file has
    no markers yet and creates the file when it does not exist. Refuses unbalanced markers
    rather than guess which part of a hand-edited file to overwrite."""
    start, end = markers(name)
    if path.exists():
        text = path.read_text()
        s, e = text.find(start), text.find(end)
        if (s == -1) != (e == -1) or (s != -1 and e < s) or text.count(start) > 1 or text.count(end) > 1:
            raise SystemExit(f"error: {path} has unbalanced {start} / {end} markers; fix by hand")
        if s == -1:
            new = text.rstrip("\n") + "\n\n" + section + "\n"
        else:
            new = text[:s] + section + text[e + len(end):]
    else:
        new = "# Benchmarks\n\n" + section + "\n"
    # Write to a temporary file and rename, so an interrupted run never leaves half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".BENCHMARKS.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# The goals of the ACL issue: ACLs (default deny, a token with one service_prefix rule) cost at
# most this share of the throughput with ACLs off, and the number of tokens in the registry
# changes throughput by no more than this either way (token lookup and rule evaluation are O(1)).
ACL_GOAL_COST = 0.05
ACL_VARIANTS = ("off", "acl", "acl-many")


def fmt_cost(cost: float | None) -> str:
    """A cost as a signed percentage (negative: faster), with a real minus sign."""
    return "n/a" if cost is None else f"{cost * 100:.1f}%".replace("-", "−")


def acl_table(stats: dict[tuple[str, int], dict], meta: dict[str, str]) -> list[str]:
    """The ACL comparison of one benchmark run with BENCH_ACL=1, as Markdown lines.

    stats maps (variant, connections) to a cell's medians: "rps", "p50_ms", "p99_ms", "errors";
    variants are ACL_VARIANTS: ACLs off, ACLs on with few tokens, ACLs on with many. meta holds
    acl_tokens_few / acl_tokens_many (tokens in the registry), acl_create_* (how the many were
    made) and acl_rule (the load token's rule)."""
    few, many = meta.get("acl_tokens_few", "?"), meta.get("acl_tokens_many", "?")
    few_s = f"{int(few):,}" if few.isdigit() else few
    many_s = f"{int(many):,}" if many.isdigit() else many
    conns = sorted({c for v, c in stats if v == "off"})
    rows = [f"| Conns | ACLs off, req/s | ACLs on, {few_s} tokens, req/s | Cost | "
            f"ACLs on, {many_s} tokens, req/s | Cost | {many_s} ÷ {few_s} tokens | "
            "p50 ms off / on / on | p99 ms off / on / on |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    costs: list[float] = []
    scale: list[float] = []
    errors = 0
    for c in conns:
        off, on, on_many = (stats.get((v, c)) for v in ACL_VARIANTS)
        if not off:
            continue

        def cost(x: dict | None) -> float | None:
            return 1 - x["rps"] / off["rps"] if x and off["rps"] > 0 else None

        def rps(x: dict | None) -> str:
            return f"{x['rps']:.0f}" if x else "n/a"

        def ms(key: str) -> str:
            return " / ".join(f"{x[key]:.2f}" if x else "n/a" for x in (off, on, on_many))

        ratio = "n/a"
        if on and on_many and on["rps"] > 0:
            ratio = f"{on_many['rps'] / on['rps']:.3f}"
            scale.append(on_many["rps"] / on["rps"] - 1)
        for x in (cost(on), cost(on_many)):
            if x is not None:
                costs.append(x)
        errors += sum(x["errors"] for x in (off, on, on_many) if x)
        rows.append(f"| {c} | {rps(off)} | {rps(on)} | {fmt_cost(cost(on))} | {rps(on_many)} | "
                    f"{fmt_cost(cost(on_many))} | {ratio} | {ms('p50_ms')} | {ms('p99_ms')} |")
    goal = ACL_GOAL_COST * 100
    verdicts = []
    if costs:
        worst = max(costs)
        verdicts.append(f"Goal: ACLs cost ≤ {goal:.0f}% of the throughput with ACLs off, at every "
                        f"connection count and token count → largest cost {fmt_cost(worst)}: "
                        f"**{'met' if worst <= ACL_GOAL_COST else 'no'}**.")
    if scale:
        widest = max(scale, key=abs)
        diff = f"{widest * 100:+.1f}%".replace("-", "−")
        verdicts.append(f"Goal: {many_s} tokens give the throughput of {few_s} (O(1) token lookup "
                        f"and rule evaluation), within ±{goal:.0f}% → largest difference {diff}: "
                        f"**{'met' if abs(widest) <= ACL_GOAL_COST else 'no'}**.")
    if errors:
        verdicts.append(f"**⚠ {errors} errors in these rows; see the table above.**")
    made = (f"The {many_s} tokens were created through the API before the load, "
            f"`POST /v1/acl/tokens` with the management token over "
            f"{meta.get('acl_create_connections', '?')} keep-alive connections: "
            f"{meta.get('acl_create_count', '?')} in {meta.get('acl_create_seconds', '?')} s "
            f"({meta.get('acl_create_rate', '?')}/s).")
    return [*rows, "", *verdicts, "",
            f"ACLs on: every node with `--acl` (default deny); `PUT /v1/acl/bootstrap`, a policy "
            f"`{meta.get('acl_rule', '?')}`, and the load sent with a token linked to it in "
            f"`X-Cairn-Token` (without a token the same request is refused with 403, checked "
            f"before the load). The other tokens link the same policy. Each variant runs on a "
            f"fresh {meta.get('acl_cluster', 'cluster')}, one after the other in the order of the "
            f"columns. {made} A cost is 1 − ACLs-on req/s ÷ ACLs-off req/s, from the medians of "
            f"the same run (negative: faster with ACLs on)."]
