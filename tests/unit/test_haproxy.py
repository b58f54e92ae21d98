"""The HAProxy runtime client: argv, config rendering and the parsers, on answers captured from
the edge image's HAProxy 2.6 (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import fsutil
from orchestrator.backends.compose import haproxy
from orchestrator.backends.compose.haproxy import EdgeError, EdgeRuntime

TEMPLATE = (Path(__file__).resolve().parents[2] / "images" / "edge" / "haproxy.cfg.tmpl").read_text()

# `show servers state slots` with blue live and green never started (address unresolved).
SERVERS_STATE = '1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 slots 1 blue 172.20.0.3 2 0 1 1 3 15 3 2 6 0 0 0 blue 8000 - 0 0 - - 0\n3 slots 2 green - 0 37 1 1 3 1 0 0 14 0 0 0 green 8000 - 0 0 - - 0\n\n'

# `show stat` after one request through the edge to blue.
SHOW_STAT = '# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,\npublic,FRONTEND,,,0,1,9985,1,83,176,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,1,0,1,,,,0,1,0,0,0,0,,1,1,1,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,1,1,1,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,80,177,0,0,\nslots,blue,0,0,0,1,,1,83,176,,0,,0,0,0,0,UP,1,1,0,0,0,4,0,,1,3,1,,1,,2,1,,1,L7OK,200,7,0,1,0,0,0,0,,,,1,0,0,,,,,1,,,0,0,1,1,,,,Layer7 check passed,,1,2,2,,,,172.20.0.3:8000,,http,,,,,,,,0,1,0,,,1,,0,0,1,1,0,1,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\nslots,green,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT (resolution),1,1,0,0,0,4,4,,1,3,2,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,0,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\nslots,BACKEND,0,0,0,1,999,1,83,176,0,0,,0,0,0,0,UP,1,1,0,,0,4,0,,1,3,0,,1,,1,1,,1,,,,0,1,0,0,0,0,,,,1,0,0,0,0,0,0,1,,,0,0,1,1,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,1,0,0,0,,,0,0,1,1,0,,,,,1,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0,5,5,864,172,0,0,\n\n'


def test_runtime_argv_passes_the_commands_as_one_argument():
    argv = haproxy.runtime_argv(["set server slots/green state ready", "show stat"])
    assert argv[:2] == ["sh", "-c"]
    assert "socat" in argv[2] and "unix-connect:/tmp/haproxy-admin.sock" in argv[2]
    # the command text is a positional parameter ($1), never spliced into the shell script
    assert argv[3:] == ["sh", "set server slots/green state ready; show stat"]


@pytest.mark.parametrize("bad", [[], ["show stat\nshutdown sessions"]])
def test_runtime_argv_refuses_empty_or_multiline(bad):
    with pytest.raises(ValueError):
        haproxy.runtime_argv(bad)


def test_command_builders():
    assert haproxy.enable_commands("green") == ["set server slots/green state ready"]
    assert haproxy.drain_commands("blue") == ["set server slots/blue state drain"]
    assert haproxy.disable_commands("blue") == ["set server slots/blue state maint"]
    assert haproxy.weight_commands("blue", 0) == ["set weight slots/blue 0"]
    assert haproxy.addr_commands("green", "172.18.0.5") == ["set server slots/green addr 172.18.0.5 port 8000"]
    with pytest.raises(ValueError):
        haproxy.enable_commands("red")
    with pytest.raises(ValueError):
        haproxy.weight_commands("blue", 300)


@pytest.mark.parametrize("live", ["blue", "green", None])
def test_render_config_enables_only_the_live_slot(live):
    text = haproxy.render_config(TEMPLATE, live)
    assert haproxy.config_live_slot(text) == live
    servers = [ln.split() for ln in text.splitlines() if ln.strip().startswith("server ")]
    assert [s[1] for s in servers] == ["blue", "green"]
    for s in servers:
        assert ("disabled" in s) == (s[1] != live)
    assert "${" not in text


def test_render_config_refuses_an_unknown_slot():
    with pytest.raises(ValueError):
        haproxy.render_config(TEMPLATE, "red")


def test_write_config_is_atomic_and_readable(tmp_path):
    path = tmp_path / "edge" / "haproxy.cfg"
    haproxy.write_config(path, "one\n")
    haproxy.write_config(path, "two\n")
    assert path.read_text() == "two\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["haproxy.cfg"]  # no temp file left


def test_parse_servers_state():
    servers = haproxy.parse_servers_state(SERVERS_STATE)
    assert set(servers) == {"blue", "green"}
    blue, green = servers["blue"], servers["green"]
    assert blue.addr == "172.20.0.3" and blue.up and not blue.maint and blue.serving
    assert not green.up and green.maint and not green.serving  # FMAINT|CMAINT|RMAINT = 37
    assert green.admin_state == 37


def test_cmaint_alone_does_not_count_as_maintenance():
    # A server "disabled" in the file and enabled at runtime keeps the CMAINT bit but serves.
    st = haproxy.ServerState("green", "172.18.0.4", op_state=2, admin_state=haproxy.ADMF_CMAINT, weight=1)
    assert st.serving
    assert not haproxy.ServerState("green", "x", 2, haproxy.ADMF_FDRAIN, 1).serving
    assert not haproxy.ServerState("green", "x", 2, 0, 0).serving


@pytest.mark.parametrize("answer", ["", "Unknown command", "1\n"])
def test_parse_servers_state_refuses_garbage(answer):
    with pytest.raises(EdgeError):
        haproxy.parse_servers_state(answer)


def test_parse_stat():
    stats = haproxy.parse_stat(SHOW_STAT)
    assert set(stats) == {"blue", "green"}
    assert stats["blue"].status == "UP" and stats["blue"].check_status == "L7OK"
    assert stats["blue"].total_sessions == 1 and stats["blue"].http_total == 1 and stats["blue"].http_5xx == 0
    assert stats["green"].status.startswith("MAINT")
    with pytest.raises(EdgeError):
        haproxy.parse_stat("No such backend.\n")


@pytest.mark.parametrize("answer, ok", [
    ("", True),
    ("\n\n", True),
    ("IP changed from '172.19.0.3' to '10.0.0.9', no need to change the port by 'stats socket command'\n", True),
    ("No such server.\n", False),
    ("Unknown command, but maybe one of the following ones is a better match:\n  add acl\n", False),
])
def test_check_answer(answer, ok):
    if ok:
        haproxy.check_answer(["x"], answer)
    else:
        with pytest.raises(EdgeError, match="edge refused"):
            haproxy.check_answer(["x"], answer)


class FakeEdge:
    """Plays HAProxy's runtime API for the runner: records commands, answers from a state table."""

    def __init__(self):
        self.calls: list[str] = []
        self.state = {"blue": (2, 0), "green": (0, 37)}   # op_state, admin_state

    def __call__(self, argv):
        line = argv[-1]
        self.calls.append(line)
        if line.startswith("show servers state"):
            rows = [f"3 slots {i} {n} 10.0.0.{i} {op} {adm} 1 1 0 0 0 0 0 0 0 0 {n} 8000 - 0 0 - - 0"
                    for i, (n, (op, adm)) in enumerate(self.state.items(), 1)]
            return 0, SERVERS_STATE.splitlines()[0] + "\n" + SERVERS_STATE.splitlines()[1] + "\n" + "\n".join(rows) + "\n"
        if line == "show stat":
            return 0, SHOW_STAT
        words = line.split()
        slot = words[2].split("/")[1]
        if words[-1] == "ready":
            self.state[slot] = (2, self.state[slot][1] & haproxy.ADMF_CMAINT)
        elif words[-1] == "drain":
            self.state[slot] = (2, haproxy.ADMF_FDRAIN)
        elif words[-1] == "maint":
            self.state[slot] = (0, haproxy.ADMF_FMAINT)
        return 0, "\n"


def test_flip_enables_the_new_slot_before_it_drains_the_old_one():
    fake = FakeEdge()
    rt = EdgeRuntime(fake)
    assert rt.serving_slots() == ["blue"]
    times = rt.flip("green", "blue")
    sets = [c for c in fake.calls if c.startswith("set ")]
    assert sets == ["set server slots/green state ready", "set server slots/blue state drain",
                    "set server slots/blue state maint"]
    assert rt.serving_slots() == ["green"]
    assert set(times) == {"flip", "drain"}


def test_a_failing_exec_is_one_clear_error():
    rt = EdgeRuntime(lambda argv: (126, "OCI runtime exec failed: container not running\n"))
    with pytest.raises(EdgeError, match="exit 126"):
        rt.servers()


# -- the traffic move every caller makes (switch flip step, revert, repair): EdgeRuntime.shift -----

class SlowEdge(FakeEdge):
    """A FakeEdge whose newly enabled server passes its health check only after `up_after` polls
    (`None`: never), and whose servers hold `sessions` requests in flight until `idle_after` polls."""

    def __init__(self, up_after: int | None = 3, sessions: int = 0, idle_after: int = 0):
        super().__init__()
        self.up_after, self.sessions, self.idle_after = up_after, sessions, idle_after
        self.polls_since_enable: dict[str, int] = {}
        self.stat_polls = 0
        self.log: list[tuple[str, ...]] = []   # ("set", line) / ("serving", slots seen by a state poll)

    def __call__(self, argv):
        line = argv[-1]
        if line.startswith("show servers state"):
            for slot, n in self.polls_since_enable.items():
                self.polls_since_enable[slot] = n + 1
                if self.up_after is not None and n + 1 >= self.up_after:
                    self.state[slot] = (2, self.state[slot][1])
            code, out = super().__call__(argv)
            self.log.append(("serving", tuple(sorted(s for s, st in haproxy.parse_servers_state(out).items()
                                                     if st.serving))))
            return code, out
        if line == "show stat":
            self.calls.append(line)
            self.stat_polls += 1
            scur = self.sessions if self.stat_polls <= self.idle_after else 0
            rows = [f"slots,{s},0,0,{scur},0,,0" + ",0" * 20 for s in self.state]
            return 0, "# pxname,svname,qcur,qmax,scur,smax,slim,stot" + ",x" * 20 + "\n" + "\n".join(rows) + "\n"
        code, out = super().__call__(argv)
        self.log.append(("set", line))
        words = line.split()
        if words[-1] == "ready":
            # HAProxy marks a just-enabled server "starting" until its health check passes.
            self.state[words[2].split("/")[1]] = (1, 0)
            self.polls_since_enable[words[2].split("/")[1]] = 0
        return code, out


def test_shift_drains_the_old_slot_only_after_the_edge_confirms_the_new_one_serving():
    edge = SlowEdge(up_after=3)
    EdgeRuntime(edge).shift("green", "blue")
    sets = [entry[1] for entry in edge.log if entry[0] == "set"]
    assert sets == ["set server slots/green state ready", "set server slots/blue state drain"]
    drain_at = edge.log.index(("set", "set server slots/blue state drain"))
    seen_before_drain = [entry[1] for entry in edge.log[:drain_at] if entry[0] == "serving"]
    assert seen_before_drain[-1] == ("blue", "green")      # confirmed: green serves (blue still does)
    assert all("green" not in seen for seen in seen_before_drain[:-1])  # it took polls to come up
    assert EdgeRuntime(edge).serving_slots() == ["green"]


def test_shift_never_drains_the_old_slot_when_the_new_one_does_not_come_up():
    edge = SlowEdge(up_after=None)
    with pytest.raises(EdgeError, match=r"did not see slot green up within 0.3s"):
        EdgeRuntime(edge).shift("green", "blue", up_timeout_s=0.3)
    assert not any("slots/blue" in entry[1] for entry in edge.log if entry[0] == "set")
    assert EdgeRuntime(edge).serving_slots() == ["blue"]


def test_shift_calls_its_pause_points_with_the_edge_in_the_state_they_name():
    edge = SlowEdge(up_after=1)
    rt = EdgeRuntime(edge)
    seen: list[tuple[str, list[str], list[str]]] = []

    def at(point: str) -> None:
        servers = rt.servers()
        seen.append((point, rt.serving_slots(), sorted(s for s, st in servers.items() if st.draining)))

    rt.shift("green", "blue", at=at)
    assert seen == [("enabled", ["blue", "green"], []), ("drained", ["green"], ["blue"])]


def test_shift_to_the_slot_already_live_drains_nothing():
    edge = SlowEdge(up_after=1)
    seen: list[str] = []
    EdgeRuntime(edge).shift("blue", "blue", at=seen.append)
    assert [entry[1] for entry in edge.log if entry[0] == "set"] == ["set server slots/blue state ready"]
    assert seen == ["enabled"]


def test_retire_waits_for_in_flight_requests_then_disables():
    edge = SlowEdge(up_after=1, sessions=2, idle_after=3)
    rt = EdgeRuntime(edge)
    rt.shift("green", "blue")
    rt.retire("blue", drain_timeout_s=30)
    assert edge.stat_polls == 4   # three polls saw requests in flight, the fourth none
    assert edge.log[-1] == ("set", "set server slots/blue state maint")
    assert rt.serving_slots() == ["green"] and rt.servers()["blue"].maint


def test_retire_gives_up_waiting_on_long_requests_and_disables_anyway():
    edge = SlowEdge(up_after=1, sessions=1, idle_after=10**9)
    rt = EdgeRuntime(edge)
    rt.shift("green", "blue")
    assert 0.3 <= rt.retire("blue", drain_timeout_s=0.3) < 30  # its own bound, not the 30 s default
    assert edge.log[-1] == ("set", "set server slots/blue state maint")


def test_flip_is_shift_then_retire():
    edge = SlowEdge(up_after=2)
    times = EdgeRuntime(edge).flip("green", "blue")
    assert [entry[1] for entry in edge.log if entry[0] == "set"] == [
        "set server slots/green state ready", "set server slots/blue state drain", "set server slots/blue state maint"]
    assert set(times) == {"flip", "drain"} and all(t >= 0 for t in times.values())


# -- the details the runtime client's answers depend on (each kills mutants `make mutation` found) ---

def stat_csv(rows: list[dict[str, str]]) -> str:
    cols = ["pxname", "svname", "scur", "stot", "status", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx",
            "hrsp_other", "check_status"]
    return "# " + ",".join(cols) + "\n" + "".join(",".join(r.get(c, "") for c in cols) + "\n" for r in rows)


def test_parse_stat_counts_every_response_class_and_reads_blanks_as_zero():
    text = stat_csv([
        {"pxname": "slots", "svname": "FRONTEND", "stot": "99"},
        {"pxname": "slots", "svname": "blue", "scur": "2", "stot": "17", "status": "UP", "hrsp_1xx": "1",
         "hrsp_2xx": "10", "hrsp_3xx": "2", "hrsp_4xx": "3", "hrsp_5xx": "4", "hrsp_other": "5", "check_status": "L7OK"},
        {"pxname": "slots", "svname": "green", "scur": "-", "stot": ""},
        {"pxname": "slots", "svname": "BACKEND", "stot": "99"},
        {"pxname": "other", "svname": "blue", "stot": "1000"},
    ])
    stats = haproxy.parse_stat(text)
    assert set(stats) == {"blue", "green"}
    blue, green = stats["blue"], stats["green"]
    assert (blue.name, blue.status, blue.check_status) == ("blue", "UP", "L7OK")
    assert (blue.current_sessions, blue.total_sessions, blue.http_5xx, blue.http_total) == (2, 17, 4, 25)
    assert (green.name, green.current_sessions, green.total_sessions, green.http_total) == ("green", 0, 0, 0)
    assert (green.status, green.check_status) == ("", "")
    assert haproxy.parse_stat(text, backend="other")["blue"].total_sessions == 1000


def test_parse_stat_without_the_optional_columns():
    stats = haproxy.parse_stat("# pxname,svname,scur\nslots,blue,3\n")
    assert stats["blue"] == haproxy.ServerStat("blue", "", 3, 0, 0, 0, "")


@pytest.mark.parametrize("answer, shown", [
    ("Unknown command.\nmore\n", "Unknown command."),
    ("", "(empty)"),
    ("   \n", "(empty)"),
    ("x" * 300, "x" * 200),
])
def test_garbage_answers_are_named_in_the_error(answer, shown):
    with pytest.raises(EdgeError) as err:
        haproxy.parse_stat(answer)
    assert str(err.value) == f"unexpected answer to `show stat`: {shown}"
    with pytest.raises(EdgeError) as err:
        haproxy.parse_servers_state(answer)
    assert str(err.value) == f"unexpected answer to `show servers state`: {shown}"


def test_render_config_leaves_the_live_line_as_written_and_names_an_unknown_slot():
    text = haproxy.render_config(TEMPLATE, "green")
    expected = TEMPLATE.replace("${green_state}", "").replace("${blue_state}", "disabled")
    assert text == expected
    with pytest.raises(ValueError, match="unknown slot 'red'"):
        haproxy.render_config(TEMPLATE, "red")


@pytest.mark.parametrize("weight, ok", [(0, True), (256, True), (257, False), (-1, False)])
def test_weight_limits_are_haproxys(weight, ok):
    if ok:
        assert haproxy.weight_commands("green", weight) == [f"set weight slots/green {weight}"]
    else:
        with pytest.raises(ValueError, match=f"weight must be 0..256, got {weight}"):
            haproxy.weight_commands("green", weight)


def test_write_config_renames_a_temp_file_from_the_same_folder(tmp_path, monkeypatch):
    """The rename is atomic only within one filesystem: the temp file must sit beside the config."""
    path = tmp_path / "edge" / "haproxy.cfg"
    renamed: list[tuple[str, str]] = []
    real_replace = fsutil.os.replace  # haproxy.cfg is written by orchestrator.fsutil.atomic_write
    monkeypatch.setattr(fsutil.os, "replace", lambda src, dst: (renamed.append((src, dst)), real_replace(src, dst)))
    haproxy.write_config(path, "one\n")
    (src, dst), = renamed
    assert Path(src).parent == path.parent and Path(dst) == path
    assert Path(src).name.startswith(".haproxy.") and Path(src).name.endswith(".tmp")  # hidden, never *.cfg


def test_write_config_that_fails_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "haproxy.cfg"
    haproxy.write_config(path, "old\n")

    def broken(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(fsutil.os, "replace", broken)
    with pytest.raises(OSError, match="disk gone"):
        haproxy.write_config(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["haproxy.cfg"]


def test_a_refused_set_command_is_an_error_naming_the_command():
    rt = EdgeRuntime(lambda argv: (0, "No such server.\n"))
    with pytest.raises(EdgeError) as err:
        rt.enable("green")
    assert str(err.value) == "edge refused `set server slots/green state ready`: No such server."


def test_stats_and_servers_read_the_runtimes_own_backend():
    answer = stat_csv([{"pxname": "slots", "svname": "blue", "stot": "1"},
                       {"pxname": "edge2", "svname": "blue", "stot": "2"}])
    rt = EdgeRuntime(lambda argv: (0, answer), backend="edge2")
    assert rt.stats()["blue"].total_sessions == 2
    seen: list[str] = []
    rt2 = EdgeRuntime(lambda argv: (seen.append(argv[-1]), (0, SERVERS_STATE.replace(" slots ", " edge2 ")))[1],
                      backend="edge2")
    assert set(rt2.servers()) == {"blue", "green"} and seen == ["show servers state edge2"]


def test_waits_return_the_seconds_they_took():
    edge = SlowEdge(up_after=2, sessions=1, idle_after=2)
    rt = EdgeRuntime(edge)
    rt.enable("green")
    assert 0 <= rt.wait_up("green") < 60
    assert 0 <= rt.wait_idle("blue") < 60
    assert 0 <= rt.shift("blue", "green") < 60
    assert 0 <= rt.retire("green") < 60


def test_wait_up_says_what_state_the_slot_is_stuck_in():
    edge = SlowEdge(up_after=None)
    rt = EdgeRuntime(edge)
    rt.enable("green")
    with pytest.raises(EdgeError, match=r"did not see slot green up within 0.2s \(starting, admin 0\)"):
        rt.wait_up("green", timeout_s=0.2)
    with pytest.raises(EdgeError, match=r"did not see slot red up within 0.2s \(missing\)"):
        rt.wait_up("red", timeout_s=0.2)


def test_flip_without_an_old_slot_only_enables_and_reports_no_drain():
    edge = SlowEdge(up_after=1)
    times = EdgeRuntime(edge).flip("green", None)
    assert [entry[1] for entry in edge.log if entry[0] == "set"] == ["set server slots/green state ready"]
    assert times["drain"] == 0.0 and times["flip"] >= 0


def test_flip_passes_its_drain_bound_to_retire():
    edge = SlowEdge(up_after=1, sessions=1, idle_after=10**9)
    times = EdgeRuntime(edge).flip("green", "blue", drain_timeout_s=0.3)
    assert 0.3 <= times["drain"] < 30
    assert edge.log[-1] == ("set", "set server slots/blue state maint")


def test_an_unknown_operational_state_is_shown_by_its_number():
    edge = SlowEdge(up_after=None)
    edge.state["green"] = (7, 4)
    with pytest.raises(EdgeError, match=r"within 0.1s \(7, admin 4\)"):
        EdgeRuntime(edge).wait_up("green", timeout_s=0.1)
    edge.state["green"] = (3, 0)
    with pytest.raises(EdgeError, match=r"\(stopping, admin 0\)"):
        EdgeRuntime(edge).wait_up("green", timeout_s=0.1)


def test_check_answer_names_every_command_of_the_session():
    with pytest.raises(EdgeError) as err:
        haproxy.check_answer(["set server slots/blue state drain", "set server slots/green state ready"],
                             "\nNo such server.\n")
    assert str(err.value) == ("edge refused `set server slots/blue state drain; set server slots/green state ready`: "
                              "No such server.")


def test_parse_servers_state_skips_other_backends_wherever_they_are():
    header, ours = SERVERS_STATE.splitlines()[1], SERVERS_STATE.splitlines()[2:4]
    other = "4 other 1 web 10.0.0.9 2 0 1 1 3 15 3 2 6 0 0 0 web 8000 - 0 0 - - 0"
    servers = haproxy.parse_servers_state("\n".join(["1", header, other, *ours, other]) + "\n")
    assert sorted(servers) == ["blue", "green"]
    assert servers["blue"].name == "blue" and servers["green"].name == "green"


@pytest.mark.parametrize("answer, message", [
    ("1\n3 slots 1 blue 172.20.0.3 2 0 1 1\n", "`show servers state` answered without a header line"),
    ("1\n", "`show servers state` answered without a header line"),
    ("1\n# be_id be_name srv_id srv_name\n3 slots 1 blue\n", "cannot read `show servers state` line: 3 slots 1 blue"),
])
def test_parse_servers_state_names_what_is_wrong(answer, message):
    with pytest.raises(EdgeError) as err:
        haproxy.parse_servers_state(answer)
    assert str(err.value) == message


def test_builders_name_what_they_refuse():
    with pytest.raises(ValueError) as err:
        haproxy.server("red")
    assert str(err.value) == "unknown slot 'red' (expected one of blue, green)"
    with pytest.raises(ValueError) as err:
        haproxy.runtime_argv([])
    assert str(err.value) == "runtime API commands must be one non-empty line"


def test_set_addr_and_weight_send_one_checked_command():
    sent: list[str] = []
    rt = EdgeRuntime(lambda argv: (sent.append(argv[-1]), (0, "IP changed from '172.19.0.3' to '10.0.0.9'\n"))[1])
    rt.set_addr("green", "10.0.0.9")
    rt.set_addr("blue", "10.0.0.8", port=9000)
    assert sent == ["set server slots/green addr 10.0.0.9 port 8000", "set server slots/blue addr 10.0.0.8 port 9000"]
    sent.clear()
    rt = EdgeRuntime(lambda argv: (sent.append(argv[-1]), (0, "\n"))[1])
    rt.set_weight("blue", 128)
    assert sent == ["set weight slots/blue 128"]
    with pytest.raises(EdgeError, match="edge refused `set weight slots/blue 1`: No such server."):
        EdgeRuntime(lambda argv: (0, "No such server.\n")).set_weight("blue", 1)


class FakeContainer:
    """What EdgeRuntime.for_container uses of a docker-py Container: exec_run(argv, demux=False)."""

    def __init__(self, answer=None, error: Exception | None = None):
        self.answer, self.error, self.argv = answer, error, None

    def exec_run(self, argv, demux=False):
        assert demux is False
        self.argv = argv
        if self.error:
            raise self.error
        return self.answer


def test_for_container_runs_the_command_through_docker_exec():
    c = FakeContainer(answer=(0, SERVERS_STATE.encode()))
    rt = EdgeRuntime.for_container(c)
    assert set(rt.servers()) == {"blue", "green"}
    assert c.argv == haproxy.runtime_argv(["show servers state slots"])
    empty = EdgeRuntime.for_container(FakeContainer(answer=(0, None)))
    assert empty.command("show info") == ""
    bad_bytes = EdgeRuntime.for_container(FakeContainer(answer=(0, b"\xff ok\n")))
    assert bad_bytes.command("show info") == "\ufffd ok\n"


def test_for_container_turns_engine_errors_into_one_edge_error():
    class APIError(Exception):
        explanation = "container 1a2b is not running"

    rt = EdgeRuntime.for_container(FakeContainer(error=APIError("409 Client Error")))
    with pytest.raises(EdgeError) as err:
        rt.servers()
    assert str(err.value) == "cannot reach the edge's runtime API (APIError: container 1a2b is not running)"
    rt = EdgeRuntime.for_container(FakeContainer(error=RuntimeError("engine gone")))
    with pytest.raises(EdgeError) as err:
        rt.servers()
    assert str(err.value) == "cannot reach the edge's runtime API (RuntimeError: engine gone)"
    rt = EdgeRuntime.for_container(FakeContainer(answer=(1, b"socat: connection refused\nmore\n")))
    with pytest.raises(EdgeError) as err:
        rt.servers()
    assert str(err.value) == "edge runtime API failed (exit 1): socat: connection refused"
