"""How the deploy commands print their results as tables (--json prints `to_dict()` instead)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from orchestrator.context import Context
from orchestrator.results import SwitchPlan, SwitchResult


def fmt_phases(phases: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.1f}s" for k, v in phases.items()) or "-"


def where(d: dict[str, Any]) -> str:
    """compose: `slot blue`; kubernetes: `revision 3`."""
    if d.get("revision") is not None:
        return f"revision {d['revision']}"
    return f"slot {d.get('slot') or '-'}"


def print_result(ctx: Context, result: SwitchResult, as_json: bool) -> None:
    res = result.to_dict()
    if as_json:
        ctx.emit_json(res)
        return
    colour = {"succeeded": "green", "noop": "cyan"}.get(res["outcome"], "red")
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("outcome", f"[{colour}]{res['outcome']}[/{colour}]")
    t.add_row("target", res["target"])
    t.add_row("from → to", f"{res.get('from_version') or '-'} → {res.get('to_version') or '-'}")
    t.add_row("digest", res.get("digest") or "-")
    if res.get("revision") is not None:
        t.add_row("revision", str(res["revision"]))
    else:
        t.add_row("slot", str(res.get("slot") or "-"))
    if res.get("reason"):
        t.add_row("reason", res["reason"])
    if res.get("phases"):
        total = sum(res["phases"].values())
        t.add_row("phases", f"{fmt_phases(res['phases'])}  (total {total:.1f}s)")
    for it in res.get("interrupted") or []:
        t.add_row("repaired", f"switch #{it['id']} ({it['action']} → {it['to_version']}, step {it['step']}): "
                              f"{it['repair']}")
    for r in res.get("repaired") or []:
        t.add_row("drift", f"repaired: {r}")
    ctx.stdout.print(t)


def print_plan(ctx: Context, plan: SwitchPlan, as_json: bool) -> None:
    if as_json:
        ctx.emit_json(plan.to_dict())
        return
    p = plan.to_dict()
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("dry run", "nothing was started, locked or recorded")
    t.add_row("target", f"{p['target']} ({p['kind']})")
    t.add_row("from → to", f"{p['from_version'] or '-'} → {p['to_version']} ({p['variant'] or 'variant unknown'})")
    t.add_row("image", p["image"] or "-")
    if p["kind"] == "compose":
        t.add_row("slot", f"start {p['slot']}, then retire {p['from_slot'] or '-'}" if not p["noop"] else p["slot"] or "-")
    else:
        t.add_row("revision", f"live {p['revision'] or '-'}; the patch makes a new one" if not p["noop"]
                  else str(p["revision"] or "-"))
    t.add_row("steps", " → ".join(p["steps"]) or "none (no-op)")
    for n in p["notes"]:
        t.add_row("note", n)
    ctx.stdout.print(t)


def print_status(ctx: Context, st: dict[str, Any]) -> None:
    out = ctx.stdout
    live = st.get("live")
    title = f"target {st['target']} ({st['kind']}"
    title += f", {st['compose']}" if st.get("compose") else ""
    title += f", edge {st['edge']})" if st.get("edge") else ")"
    out.print(f"[bold]{title}[/bold]")
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    if live:
        health = live.get("health") or "-"
        colour = "green" if health == "ready" else "red"
        t.add_row("live", f"{live['version']}  ({live.get('variant') or 'variant unknown'}, {where(live)})")
        t.add_row("digest", live.get("digest") or "-")
        t.add_row("image", live.get("image") or "-")
        t.add_row("since", live.get("since") or "-")
        t.add_row("health", f"[{colour}]{health}[/{colour}]")
    else:
        t.add_row("live", "nothing is live (run `orchestrator up VERSION`)")
    prev = st.get("previous")
    if prev:
        warm = " (warm)" if prev.get("warm") else ""
        variant = f"{prev['variant']}, " if prev.get("variant") else ""
        t.add_row("previous", f"{prev['version']}  ({variant}{where(prev)}){warm}")
    out.print(t)
    slots = st.get("slots") or []
    if slots:
        s = Table(title="slots", title_justify="left")
        keys = [k for k in ("slot", "revision", "state", "health", "version", "edge", "weight", "restarts", "oom_killed",
                            "port", "image")
                if any(k in x for x in slots)]
        for k in keys:
            s.add_column(k)
        for x in slots:
            s.add_row(*[(short_image(x[k]) if k == "image" else str(x[k])) if x.get(k) is not None else "-"
                        for k in keys])
        out.print(s)
    last = st.get("last_analysis")
    if last:
        figures = ", ".join(f"{k} {v:.3g}" for k, v in (last.get("figures") or {}).items()
                            if isinstance(v, (int, float)) and k != "window_s")
        out.print(f"last canary analysis ({last.get('at')}, switch #{last.get('switch')}, {last.get('version')} at "
                  f"{last.get('share')}%): {last.get('outcome')} — {last.get('reason')}; {figures}")
    drift = st.get("drift") or []
    if drift:
        out.print("[bold yellow]drift[/bold yellow] (the next switch repairs it):")
        for d in drift:
            out.print(f"  - {d}")
    else:
        out.print("drift: none")
    for it in [] if st.get("repairs") else st.get("interrupted") or []:  # `repair` lists them as repairs
        out.print(f"[yellow]repaired interrupted switch #{it['id']}[/yellow] ({it['action']} → {it['to_version']}, "
                  f"step {it['step']}): {it['repair']}")
    for it in st.get("switch_running") or []:
        out.print(f"[cyan]switch #{it['id']} in progress[/cyan] ({it['action']} → {it['to_version']}, step {it['step']})")


def short_image(ref: str) -> str:
    head, sep, digest = ref.rpartition("@")
    return f"{head}@{digest[:19]}…" if sep else ref


def print_history(ctx: Context, h: dict[str, Any]) -> None:
    entries = h.get("entries") or []
    if not entries:
        ctx.stdout.print(f"no switches on target {h.get('target')} yet")
        return
    t = Table(title=f"history of {h.get('target')}", title_justify="left")
    # kubernetes: one row per Deployment revision, as `kubectl rollout history` lists them.
    kube = any("revision" in e for e in entries)
    for col in ("revision" if kube else "#", "at (UTC)", "action", "from → to", "outcome",
                "change-cause" if kube else "phases", "user", "reason"):
        t.add_column(col, overflow="fold")
    colours = {"succeeded": "green", "noop": "cyan", "running": "yellow", "interrupted": "yellow",
               "live": "green", "superseded": "dim"}
    for e in entries:
        c = colours.get(e["outcome"], "red")
        to = (e.get("to_version") or "-") + (f" ({e['variant']})" if e.get("variant") else "") \
            + (" [red](failed digest)[/red]" if e.get("failed_digest") else "")
        t.add_row(str(e.get("revision" if kube else "id") or "-"), (e.get("at") or "")[:19].replace("T", " "),
                  e["action"], f"{e.get('from_version') or '-'} → {to}", f"[{c}]{e['outcome']}[/{c}]",
                  (e.get("change_cause") or "-") if kube else fmt_phases(e.get("phases") or {}),
                  e.get("user") or "-", e.get("reason") or "")
    ctx.stdout.print(t)
    for e in entries:  # compose canary switches: each step's verdict (--json has the figures)
        if e.get("canary"):
            steps = ", ".join(f"{s.get('share')}% {s.get('outcome')}" + (f" on {s['metric']}" if s.get("metric") else "")
                              for s in e["canary"])
            ctx.stdout.print(f"canary of #{e.get('id')}: {steps}")
    rate = h.get("success_rate")
    if rate is None:
        ctx.stdout.print("success rate: no counted switches in this range")
    else:
        ctx.stdout.print(f"success rate: {rate:.0%} ({h.get('succeeded')}/{h.get('counted')} switches succeeded)")
